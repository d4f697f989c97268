"""The ``[limits]`` answer budget: how many registration mails we send, per peer and in all.

Every registration answer goes to an address we were *told*, by a blank mail's
envelope sender or by whoever typed it into ``/signup``; a forged flood would
make us send mail to strangers (backscatter). One :class:`AnswerBudget` guards
both ways in, shared by the SMTP listener (on the event loop) and the web app
(in waitress's threads), so it holds a lock.

- Per peer IP per minute: residents' mails reach us through their carrier's few
  outbound servers, so this is generous, and ``trusted_networks`` (those
  carriers, or the reverse proxy in front of the web app) are exempt. An IPv6
  peer is counted by its /64, which one host can fill with addresses at will
  (:func:`peer_key`).
- Per hour in all, trusted or not: this caps what any flood can make us send.

The per-address rule (one answer per address per 10 minutes) is not here: it
needs the database and lives in :mod:`maild.residents.registration` for both paths.

An answer is charged *before* it is written (:meth:`AnswerBudget.take`) and
refunded when none went out (the address was throttled or invalid, or the
database failed), so that concurrent sessions can never together overrun a
limit. Kept in memory: after a restart the budget is fresh, which errs towards
answering residents.

Per node, when several nodes share one database: each counts what it answers, so N
nodes may send up to N × ``answers_per_hour`` in an hour (docs/operations.md §4). A
shared count would put a database write in front of every answer for a limit that only
caps a flood's size; the rule that matters to each resident, one answer per address per
10 minutes, is in the database and holds across nodes.
"""

from __future__ import annotations

import collections
import datetime as dt
import functools
import ipaddress
import math
import threading
from collections.abc import Iterable
from dataclasses import dataclass

from maild.common.clock import Clock
from maild.common.config import LimitsConfig

PER_IP_WINDOW = dt.timedelta(minutes=1)
TOTAL_WINDOW = dt.timedelta(hours=1)

# Reasons an answer must wait (also metric labels: "deferred:<reason>").
IP_RATE = "ip-rate"
HOURLY = "hourly"

# Forget idle peers once this many are remembered, rather than on every answer.
_PRUNE_AT = 1000

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class OverBudget(Exception):
    """An answer must wait; ``retry_after`` is whole seconds until one would be allowed."""

    def __init__(self, reason: str, retry_after: int) -> None:
        super().__init__(f"{reason} limit reached; retry in {retry_after} s")
        self.reason = reason
        self.retry_after = retry_after


@dataclass(frozen=True, eq=False)
class Charge:
    """One answer taken from the budget; hand it back with :meth:`AnswerBudget.refund`.

    Compared by identity: two charges at the same moment from the same peer are
    still two answers.
    """

    ip: str | None  # the peer_key; None when no per-peer minute is counted (unknown, trusted)
    at: dt.datetime


@functools.lru_cache(maxsize=1024)
def _address(ip: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """``ip`` parsed, an IPv4-mapped IPv6 address (a dual-stack listener's) as IPv4.

    Cached: every session and every answer asks about its peer, and mail comes from a
    few carrier MTAs over and over."""
    if ip is None:
        return None
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def is_trusted(ip: str | None, networks: Iterable[Network]) -> bool:
    """Whether ``ip`` lies in one of ``networks``; an IPv4-mapped IPv6 peer counts as IPv4."""
    address = _address(ip)
    return address is not None and any(address in network for network in networks)


def peer_key(ip: str) -> str:
    """What a per-peer limit counts ``ip`` as: the IPv4 address, or the IPv6 /64."""
    address = _address(ip)
    if address is None:
        return ip
    if isinstance(address, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class AnswerBudget:
    """Answers per peer IP per minute (trusted networks exempt), and per hour in all."""

    def __init__(self, limits: LimitsConfig, clock: Clock) -> None:
        self.limits = limits
        self.clock = clock
        self._lock = threading.Lock()
        self._by_ip: dict[str, collections.deque[Charge]] = {}
        self._all: collections.deque[Charge] = collections.deque()
        # Refusals since start by reason (blank mails and /signup alike), for /metrics:
        # the log says a flood of them once a minute, these keep the exact numbers.
        self.refused: collections.Counter[str] = collections.Counter()

    def reconfigure(self, limits: LimitsConfig) -> None:
        """Take reloaded limits (SIGHUP); what was spent so far still counts."""
        with self._lock:
            self.limits = limits

    def trusted(self, ip: str | None) -> bool:
        return is_trusted(ip, self.limits.trusted_networks)

    def take(self, ip: str | None) -> Charge:
        """Charge one answer to ``ip`` (None: a peer we cannot name); raise OverBudget."""
        with self._lock:
            now = self.clock.now()  # under the lock: charges stay in time order
            limits = self.limits
            _expire(self._all, now - TOTAL_WINDOW)
            if len(self._all) >= limits.answers_per_hour:
                self.refused[HOURLY] += 1
                raise OverBudget(HOURLY, _seconds_until(self._all[0].at + TOTAL_WINDOW, now))
            counted = peer_key(ip) if ip is not None and not self.trusted(ip) else None
            recent = self._by_ip.get(counted) if counted is not None else None
            if recent is not None:
                _expire(recent, now - PER_IP_WINDOW)
                if len(recent) >= limits.answers_per_ip_per_minute:
                    self.refused[IP_RATE] += 1
                    raise OverBudget(IP_RATE, _seconds_until(recent[0].at + PER_IP_WINDOW, now))
            charge = Charge(counted, now)
            self._all.append(charge)
            if counted is not None:
                self._by_ip.setdefault(counted, collections.deque()).append(charge)
                if len(self._by_ip) > _PRUNE_AT:
                    self._prune(now)
            return charge

    def refund(self, charge: Charge) -> None:
        """No answer went out after all: give ``charge`` back (a second refund is a no-op)."""
        with self._lock:
            _discard(self._all, charge)
            if charge.ip is not None and charge.ip in self._by_ip:
                _discard(self._by_ip[charge.ip], charge)

    def spent(self, ip: str | None = None) -> int:
        """Answers counted now: against ``ip`` in its minute, or in all for the hour."""
        with self._lock:
            now = self.clock.now()
            if ip is None:
                _expire(self._all, now - TOTAL_WINDOW)
                return len(self._all)
            recent = self._by_ip.get(peer_key(ip))
            if recent is None:
                return 0
            _expire(recent, now - PER_IP_WINDOW)
            return len(recent)

    def _prune(self, now: dt.datetime) -> None:
        cutoff = now - PER_IP_WINDOW
        for key in list(self._by_ip):
            _expire(self._by_ip[key], cutoff)
            if not self._by_ip[key]:
                del self._by_ip[key]


def _expire(charges: collections.deque[Charge], cutoff: dt.datetime) -> None:
    while charges and charges[0].at <= cutoff:
        charges.popleft()


def _discard(charges: collections.deque[Charge], charge: Charge) -> None:
    # Refunds come soon after the charge: look from the newest end.
    for index in range(len(charges) - 1, -1, -1):
        if charges[index] is charge:
            del charges[index]
            return


def _seconds_until(moment: dt.datetime, now: dt.datetime) -> int:
    return max(1, math.ceil((moment - now).total_seconds()))
