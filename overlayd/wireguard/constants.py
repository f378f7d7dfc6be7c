"""Protocol constants of WireGuard (whitepaper section 6 and wireguard-go device/constants.go).

Times are in seconds (floats), as the core's injected clock is.
"""

from typing import Final

# Key lifetime limits (whitepaper 6.1).
REKEY_AFTER_MESSAGES: Final = 1 << 60
REJECT_AFTER_MESSAGES: Final = (1 << 64) - (1 << 13) - 1
REKEY_AFTER_TIME: Final = 120.0
REJECT_AFTER_TIME: Final = 180.0
REKEY_ATTEMPT_TIME: Final = 90.0
REKEY_TIMEOUT: Final = 5.0
KEEPALIVE_TIMEOUT: Final = 10.0
# Retransmits jitter by up to a third of a second so peers do not stay in lockstep.
REKEY_TIMEOUT_JITTER_MAX: Final = 1.0 / 3.0
# Initiations are retried this many times (REKEY_ATTEMPT_TIME / REKEY_TIMEOUT) before giving up.
MAX_TIMER_HANDSHAKES: Final = int(REKEY_ATTEMPT_TIME / REKEY_TIMEOUT)
# Keys left after a failed or idle session are destroyed after this long.
ZERO_KEY_MATERIAL_AFTER: Final = REJECT_AFTER_TIME * 3
# The initiator rekeys on receive once its session is this old (whitepaper 6.2).
REKEY_ON_RECEIVE_AFTER: Final = REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT

# Denial-of-service protection (whitepaper 5.3, 5.4.7).
COOKIE_REFRESH_TIME: Final = 120.0
HANDSHAKE_INITIATION_RATE: Final = 1.0 / 50.0
UNDER_LOAD_AFTER_TIME: Final = 1.0
RATELIMIT_PACKETS_PER_SECOND: Final = 20
RATELIMIT_BURST: Final = 5

# Transport data.
PADDING_MULTIPLE: Final = 16
DEFAULT_MTU: Final = 1420
MAX_STAGED_PACKETS: Final = 128

# Replay window: 8192 bits in 64-bit words, one word of slack as in RFC 6479.
REPLAY_WORD_BITS: Final = 64
REPLAY_BITS_TOTAL: Final = 8192
REPLAY_WINDOW_SIZE: Final = REPLAY_BITS_TOTAL - REPLAY_WORD_BITS  # 8128

# Wire format (whitepaper 5.4).
MESSAGE_INITIATION: Final = 1
MESSAGE_RESPONSE: Final = 2
MESSAGE_COOKIE_REPLY: Final = 3
MESSAGE_TRANSPORT: Final = 4
INITIATION_SIZE: Final = 148
RESPONSE_SIZE: Final = 92
COOKIE_REPLY_SIZE: Final = 64
TRANSPORT_HEADER_SIZE: Final = 16
TAG_SIZE: Final = 16
TRANSPORT_MIN_SIZE: Final = TRANSPORT_HEADER_SIZE + TAG_SIZE  # a keepalive
KEY_SIZE: Final = 32
MAC_SIZE: Final = 16
TIMESTAMP_SIZE: Final = 12
