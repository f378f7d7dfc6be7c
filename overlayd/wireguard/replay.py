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

    def accept_all(self, counters: list[int]) -> list[bool]:
        """`accept` for each counter in turn. A run of consecutive counters all newer than the
        highest seen (a GRO batch in order, the usual case) is recorded a word at a time."""
        first = counters[0] if counters else 0
        last = first + len(counters) - 1
        if not counters or first <= self._highest or last >= REJECT_AFTER_MESSAGES \
                or last - first >= REPLAY_WINDOW_SIZE or counters != list(range(first, last + 1)):
            return [self.accept(c) for c in counters]
        words = self._words
        current = self._highest >> _WORD_SHIFT
        for i in range(1, min((last >> _WORD_SHIFT) - current, _WORDS) + 1):
            words[(current + i) % _WORDS] = 0
        self._highest = last
        # Every bit from first to last is clear: they are all above the old highest.
        for word in range(first >> _WORD_SHIFT, (last >> _WORD_SHIFT) + 1):
            low = max(first, word << _WORD_SHIFT) & _BIT_MASK
            high = min(last, (word << _WORD_SHIFT) | _BIT_MASK) & _BIT_MASK
            words[word % _WORDS] |= ((1 << (high - low + 1)) - 1) << low
        return [True] * len(counters)
