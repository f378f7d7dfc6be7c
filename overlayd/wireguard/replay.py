"""Sliding replay window over transport counters (RFC 6479, as the kernel and wireguard-go).

8192 bits in 128 words of 64; the newest word is reused as it advances, so the window that is
guaranteed is 8192 - 64 = 8128 counters behind the highest seen.
"""

from overlayd.wireguard.constants import REJECT_AFTER_MESSAGES, REPLAY_BITS_TOTAL, REPLAY_WINDOW_SIZE

_WORD_SHIFT = 6  # log2(64)
_BIT_MASK = 63
_WORDS = REPLAY_BITS_TOTAL >> _WORD_SHIFT  # 128


class ReplayWindow:
    __slots__ = ("_highest", "_words")

    def __init__(self) -> None:
        self._highest = 0
        self._words = [0] * _WORDS

    def accept(self, counter: int) -> bool:
        """Record `counter`; False if it was seen, is too old, or is past the message limit.

        Call only after the packet authenticated, or forged counters would advance the window.
        """
        if counter >= REJECT_AFTER_MESSAGES:
            return False
        words = self._words
        word = counter >> _WORD_SHIFT
        if counter > self._highest:
            current = self._highest >> _WORD_SHIFT
            for i in range(1, min(word - current, _WORDS) + 1):
                words[(current + i) % _WORDS] = 0
            self._highest = counter
        elif self._highest - counter > REPLAY_WINDOW_SIZE:
            return False
        word %= _WORDS
        bit = 1 << (counter & _BIT_MASK)
        old = words[word]
        if old & bit:
            return False
        words[word] = old | bit
        return True
