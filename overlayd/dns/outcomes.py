"""What became of a query or packet: the label values of overlayd_dns_* (pure constants).

A fixed set, never taken from query data, so no client can blow up the number of time series.
"""

# overlayd_dns_queries_total{result}: queries answered, by what the answer was.
ANSWER = "answer"  # NOERROR with the record asked for
NODATA = "nodata"  # NOERROR, the name exists, no record of that type
NXDOMAIN = "nxdomain"
REJECTED = "rejected"  # REFUSED (a class other than IN) or BADVERS (EDNS version other than 0)
FORWARD = "forward"  # relayed an upstream resolver's response
SERVFAIL = "servfail"  # not ours, and no upstream answered in time (or none is configured)
RESULTS = (ANSWER, NODATA, NXDOMAIN, REJECTED, FORWARD, SERVFAIL)

# overlayd_dns_dropped_total{reason}: packets or connections dropped without an answer.
DROP_MALFORMED = "malformed"  # does not parse: truncated, too short, trailing junk, bad labels, not one question
DROP_BAD_POINTER = "bad_pointer"  # a compression pointer forward or to itself: how compression loops end
DROP_OVERSIZED = "oversized"  # larger than any query needs (resolver.MAX_QUERY_BYTES)
DROP_RESPONSE = "response"  # QR set: a response sent to us (reflection, or a confused peer)
DROP_NOT_QUERY = "not_query"  # opcode other than QUERY (NOTIFY, UPDATE...)
DROP_FORWARD_BUSY = "forward_busy"  # too many forwards in flight: shed, the client retries
DROP_TCP_BUSY = "tcp_busy"  # too many TCP connections open: the new one is closed at once
DROP_SEND_FAILED = "send_failed"  # the kernel refused the reply (full buffer, unreachable)
DROP_BAD_UPSTREAM = "bad_upstream"  # a reply from an upstream that is not the answer to our question
DROP_INTERNAL = "internal_error"  # a bug: logged with its traceback; the server goes on
DROP_REASONS = (DROP_MALFORMED, DROP_BAD_POINTER, DROP_OVERSIZED, DROP_RESPONSE, DROP_NOT_QUERY, DROP_FORWARD_BUSY,
                DROP_TCP_BUSY, DROP_SEND_FAILED, DROP_BAD_UPSTREAM, DROP_INTERNAL)
