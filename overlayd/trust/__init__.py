"""Optional cluster trust anchor: tamper-evident host records.

Anyone who can write etcd can write a host record, and every daemon programs its
kernel from those records: without a check, such a writer could add a peer (a
WireGuard key of its own, a VTEP pointing at its machine) or announce a subnet.
With a trust anchor configured, a record counts only when it is signed by a host key
that the cluster CA has certified for the record's node name.

    keyfiles.py  Ed25519 key files (PEM; private keys 0600 from creation)
    certs.py     host certificates (format documented there), the trust anchor
    signing.py   signed record format, RecordSigner / RecordVerifier
    config.py    the daemon's [trust] section -> HostTrust(signer, verifier)

The cluster layer stays ignorant of all this: it takes an optional RecordEncoder
(the signer) and LeaseVerifier (the verifier), see overlayd/cluster/records.py.
A key whose record does not verify still counts as taken when claiming (it is never
overwritten), but never as a peer.

Limits, by design: a host holding a valid certificate can claim any free subnet and
can, with write access to etcd, overwrite other keys (a compromised certified host is
out of scope); a record once validly signed can be written back under the same key
until its certificate expires (keep certificates short-lived); there is no revocation
list (rotate the CA, or let the certificate expire).
"""
