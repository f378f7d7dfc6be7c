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
    configsig.py the cluster config signed by the CA (refused unsigned with an anchor)
    revocation.py the CA-signed revocation list at {prefix}/revoked, never rolled back
    guard.py     the daemon's re-check timer: expired or revoked peers dropped, own certificate checked

The cluster layer stays ignorant of all this: it takes an optional RecordEncoder
(the signer) and LeaseVerifier (the verifier), see overlayd/cluster/records.py.
A key whose record does not verify still counts as taken when claiming (it is never
overwritten), but never as a peer.

Limits, by design: a host holding a valid certificate can claim any free subnet and
can, with write access to etcd, overwrite other keys (a compromised certified host is
out of scope); a record once validly signed can be written back under the same key
until its certificate expires or is revoked (`overlayctl ca revoke`; peers notice within
[trust] recheck_interval); a config the CA once signed for this prefix can be written back
(there is no config generation; daemons read the config only when they start);
daemons that never saw a revocation list (new hosts, lost state) trust whatever newest
signed list etcd holds.
"""
