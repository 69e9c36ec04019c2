"""multi-event, in Python: the twin of plugins/multi-event (Rust), built with componentize-py
against the same WIT (wit/since_v0.2.0) and held to the same fixtures
(plugins/multi-event/fixtures/multi-event.ndjson).

The referring affiliate earns a CPA on the customer's first deposit, another on the first
trade, and a volume bonus once the customer's cumulative traded lots exceed a threshold; each
once per customer. Parents with `override_percent` earn that share of what the level below
earned. A `chargeback` (or `refund`) whose attribute `deposit` names the first deposit claws
back what that deposit paid, its CPA and the overrides of it, as they were paid (kept in state
with them, as the Rust SDK's `remember_paid` keeps them), whatever the deals say by then.

| deal term (attributed affiliate) | default | meaning |
| --- | --- | --- |
| `ftd_cpa` | 10 | paid on the first deposit |
| `ftd_min_deposit` | 0.01 | a first deposit below this pays nothing (and stays the first); a deposit of 0 or less never pays |
| `first_trade_cpa` | 5 | paid on the first trade |
| `volume_bonus` | 20 | paid once cumulative lots exceed the threshold |
| `volume_threshold_lots` | 10 | "exceed": 10 lots exactly does not pay |

Money is `decimal.Decimal`, never float, and state keeps decimals as text, as the Rust SDK does,
so both plugins read and write the same state.
"""

from decimal import Decimal, InvalidOperation

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import log, state
from wit_world.imports.types import Commission, CommissionRef


class RuleError(Exception):
    """A refusal to evaluate the event; the host stores the event as failed with the message."""


def decimal(what, text):
    try:
        value = Decimal(text)
    except InvalidOperation:
        value = None
    if value is None or not value.is_finite():
        raise RuleError(f'{what}: "{text}" is not a decimal number')
    return value


def term(affiliate, key, default=None):
    """A deal term as a decimal, `default` when absent."""
    for name, value in affiliate.deal:
        if name == key:
            return decimal(key, value)
    return default


def attribute(event, key):
    for name, value in event.attributes:
        if name == key:
            return value
    return None


def customer_key(customer, name):
    return f"customer:{customer}:{name}"


def claim(key):
    """Sets the flag `key`; True only the first time: the way to pay something once."""
    if state.get(key) is not None:
        return False
    state.set(key, b"1")
    return True


def state_decimal(key):
    value = state.get(key)
    return Decimal(0) if value is None else decimal(key, value.decode())


def pay(context, affiliate, amount, rule, explanation, reverses=None):
    return Commission(affiliate.id, str(amount), context.operator_currency, rule, explanation, reverses)


def first_deposit(event, context, affiliate):
    if event.amount is None:
        raise RuleError("deposit without an amount")
    amount = decimal("amount", event.amount)
    minimum = term(affiliate, "ftd_min_deposit", Decimal("0.01"))
    # No money in (0, negative, or an FX conversion that rounded to 0) is no first deposit,
    # whatever the minimum says.
    if amount <= 0 or amount < minimum:
        log.log(log.Level.INFO, f"deposit {amount} below ftd_min_deposit {minimum}: no FTD yet")
        return []
    if not claim(customer_key(event.customer, "ftd-paid")):
        return []
    cpa = term(affiliate, "ftd_cpa", Decimal(10))
    state.set(customer_key(event.customer, "ftd-event"), event.id.encode())
    currency = event.currency or context.operator_currency
    return [pay(context, affiliate, cpa, "ftd-cpa", f"first deposit: CPA {cpa} on deposit {amount} {currency}")]


def trade(event, context, affiliate):
    lots = attribute(event, "lots")
    if lots is None:
        raise RuleError("trade without the attribute `lots`")
    lots = decimal("lots", lots)
    if lots.is_signed() and lots != 0:
        raise RuleError(f"lots: {lots} is negative")
    commissions = []
    if claim(customer_key(event.customer, "first-trade-paid")):
        cpa = term(affiliate, "first_trade_cpa", Decimal(5))
        commissions.append(
            pay(context, affiliate, cpa, "first-trade-cpa", f"first trade: CPA {cpa} on a trade of {lots} lots")
        )
    total_key = customer_key(event.customer, "lots")
    total = state_decimal(total_key) + lots
    state.set(total_key, str(total).encode())
    threshold = term(affiliate, "volume_threshold_lots", Decimal(10))
    if total > threshold and claim(customer_key(event.customer, "volume-bonus-paid")):
        bonus = term(affiliate, "volume_bonus", Decimal(20))
        commissions.append(
            pay(
                context,
                affiliate,
                bonus,
                "volume-bonus",
                f"volume bonus: {bonus} as cumulative lots reached {total} (over {threshold})",
            )
        )
    return commissions


def plain(amount):
    """A decimal as the Rust plugin keeps it (`Decimal::normalize`): no trailing zeros, no exponent."""
    return format(Decimal(amount).normalize(), "f")


def remember_paid(event_id, commissions):
    """What the Rust SDK's `state::remember_paid` keeps: one line per commission, under `paid:{event}`."""
    lines = [f"{paid.affiliate}\t{paid.rule}\t{plain(paid.amount)}\t{paid.currency}" for paid in commissions]
    state.set(f"paid:{event_id}", "\n".join(lines).encode())


def reverse_paid(event_id, because):
    """The Rust SDK's `state::reverse_paid`: claws back, once, what `remember_paid` kept."""
    key = f"paid:{event_id}"
    remembered = state.get(key)
    if remembered is None:
        return []
    state.delete(key)
    reversed_ = []
    for line in remembered.decode().splitlines():
        affiliate, rule, amount, currency = line.split("\t")
        original = decimal(key, amount)
        reversed_.append(
            Commission(
                affiliate,
                str(-original),
                currency,
                f"{rule}-reversal",
                because(rule, original),
                CommissionRef(event_id, rule),
            )
        )
    return reversed_


def claw_back_first_deposit(event, context, affiliate):
    deposit = attribute(event, "deposit")
    if deposit is None:
        raise RuleError(f"a {event.kind} without the attribute `deposit` (the deposit it reverses)")
    first = state.get(customer_key(event.customer, "ftd-event"))
    if first != deposit.encode():
        log.log(log.Level.INFO, f"{event.kind} of {deposit}: not the first deposit that paid, nothing to claw back")
        return []
    legacy_cpa = customer_key(event.customer, "ftd-cpa")
    if state.get(legacy_cpa) is None:

        def because(rule, amount):
            what = "CPA" if rule == "ftd-cpa" else rule
            return f"{event.kind} of first deposit {deposit}: {what} {amount} clawed back"

        return reverse_paid(deposit, because)
    # A first deposit paid by a version that kept only its CPA: the overrides were not kept,
    # so they are worked out again from today's deals.
    paid = state_decimal(legacy_cpa)
    state.delete(legacy_cpa)
    direct = [
        pay(
            context,
            affiliate,
            -paid,
            "ftd-cpa-reversal",
            f"{event.kind} of first deposit {deposit}: CPA {paid} clawed back",
            CommissionRef(deposit, "ftd-cpa"),
        )
    ]
    return direct + parent_overrides(direct, context)


def parent_overrides(direct, context):
    """Each parent with `override_percent` earns that share of what the level below earned."""
    overrides = []
    below = direct
    for level, parent in enumerate(context.referral_chain[1:], start=1):
        percent = term(parent, "override_percent")
        if percent is None:
            break
        child = context.referral_chain[level - 1].id
        rule = f"override-l{level}"
        shares = []
        for earned in below:
            share = Decimal(earned.amount) * percent / 100
            reverses = CommissionRef(earned.reverses.event_id, rule) if earned.reverses else None
            explanation = f"level {level} override: {percent}% of {earned.amount} earned by {child} ({earned.rule})"
            shares.append(pay(context, parent, share, rule, explanation, reverses))
        below = shares
        overrides.extend(shares)
    return overrides


class Rules(exports.Rules):
    def evaluate(self, event, context):
        try:
            affiliate = context.referral_chain[0]
            if event.kind == "deposit":
                direct = first_deposit(event, context, affiliate)
            elif event.kind == "trade":
                direct = trade(event, context, affiliate)
            elif event.kind in ("chargeback", "refund"):
                return claw_back_first_deposit(event, context, affiliate)
            else:
                direct = []
            paid = direct + parent_overrides(direct, context)
            if event.kind == "deposit" and paid:
                remember_paid(event.id, paid)
            return paid
        except RuleError as error:
            raise Err(str(error))

    def settle(self, period, context):
        return []
