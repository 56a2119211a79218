"""guard.actions.gates: the safety gates over random candidates and policies, and a few plain examples."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from datetime import datetime, timedelta, timezone

from hypothesis import event, given, settings
from hypothesis import strategies as st

from guard.actions.executors import EXECUTORS
from guard.actions.gates import (
    EXECUTE,
    PLAN,
    SKIPPED_ACCOUNT,
    SKIPPED_BREAKER,
    SKIPPED_CAP,
    SKIPPED_PROTECTED,
    SKIPPED_UNMANAGED,
    SKIPPED_YOUNG,
    WAIT,
    Candidate,
    Policy,
    Verdict,
    breaker_open,
    decide,
)
from guard.audit import APPROVED, CANCELLED, DONE, FAILED, IN_PROGRESS, PENDING, PLANNED, SKIPPED, Intent
from guard.model import freeze_tags

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
ACCOUNT = "123456789012"
OTHER_ACCOUNT = "210987654321"
REGIONS = ("us-east-1", "us-west-2", "eu-west-1")
PROTECT = ("guard:protect", "true")
MANAGED = ("guard:managed", "true")
ACTIONABLE = (None, PLANNED, APPROVED)
"""Audit statuses a candidate can still get a verdict in; any other is under way or finished."""
RESULTS = {EXECUTE, PLAN, WAIT, SKIPPED_PROTECTED, SKIPPED_ACCOUNT, SKIPPED_UNMANAGED, SKIPPED_YOUNG, SKIPPED_CAP,
           SKIPPED_BREAKER}
HOUR = timedelta(hours=1)


def make_policy(**overrides) -> Policy:
    values = dict(mode="enforce", allowed_accounts=frozenset({ACCOUNT}), allowed_regions=frozenset({"us-east-1"}),
                  protect_tag=PROTECT, managed_tag=MANAGED, min_resource_age=timedelta(hours=6), max_per_cycle=5,
                  max_per_hour=20, breaker_failures=3, breaker_cooldown=HOUR, notification_required=False)
    return Policy(**(values | overrides))


def make_candidate(key: str = "k1", action: str = "release", resource_id: str = "eipalloc-1",
                   waste: float | None = 0.005, status: str | None = None, tags: dict[str, str] | None = None,
                   account_id: str = ACCOUNT, region: str = "us-east-1", open_for: timedelta = timedelta(days=2),
                   grace: timedelta = timedelta(hours=24), announced: bool = True, act_on_unmanaged: bool = False,
                   age: timedelta | None = timedelta(days=30)) -> Candidate:
    executor = EXECUTORS[action]
    intent = Intent(key=key, rule="some-rule", action=action, account_id=account_id, region=region,
                    resource_id=resource_id, resource_type=executor.resource_type, owner="ana", finding_id=1,
                    summary="", waste_hourly_usd=waste, params={})
    managed = {MANAGED[0]: MANAGED[1]}
    return Candidate(intent=intent, due_from=NOW - open_for, grace=grace, announced=announced,
                     act_on_unmanaged=act_on_unmanaged, tags=freeze_tags(managed if tags is None else tags),
                     created_at=None if age is None else NOW - age, existing_status=status)


def rank(candidate: Candidate) -> tuple:
    """The order the caps admit candidates in: approved first, then the costliest, then by key."""
    return (candidate.existing_status != APPROVED, -(candidate.intent.waste_hourly_usd or 0.0), candidate.intent.key)


def has(candidate: Candidate, pair: tuple[str, str]) -> bool:
    return candidate.tags.get(pair[0], "").lower() == pair[1]


# -- strategies -----------------------------------------------------------------------------------------------------

def often(common, *rare):
    """``common`` about two draws in three, else one of ``rare``: most candidates pass most gates."""
    return st.sampled_from([common] * (2 * len(rare)) + list(rare))


protect_values = often(None, "true", "TRUE", "false", "")
managed_values = often("true", None, "True", "false", "yes")
offsets = st.sampled_from([timedelta(0), timedelta(minutes=30), HOUR, timedelta(hours=5, minutes=59),
                           timedelta(hours=6), timedelta(days=2), timedelta(days=30)])


@st.composite
def candidates(draw) -> list[Candidate]:
    """Up to a dozen candidates over few resources (so pairs repeat), with unique idempotency keys."""
    count = draw(st.integers(0, 12))
    made = []
    for number in range(count):
        tags: dict[str, str] = {"owner": "ana"}
        for pair, values in ((PROTECT, protect_values), (MANAGED, managed_values)):
            value = draw(values)
            if value is not None:
                tags[pair[0]] = value
        made.append(make_candidate(
            key=f"key-{number:02d}", action=draw(st.sampled_from(sorted(EXECUTORS))),
            resource_id=draw(st.sampled_from(["r-1", "r-2", "r-3", "r-4", "r-5", "r-6"])),
            waste=draw(st.none() | st.sampled_from([0.0, 0.005, 0.07, 0.07, 1.5, 3.06])),
            status=draw(often(None, PLANNED, APPROVED, APPROVED, PENDING, IN_PROGRESS, DONE, FAILED, SKIPPED,
                              CANCELLED)),
            tags=tags, account_id=draw(often(ACCOUNT, OTHER_ACCOUNT)), region=draw(often(*REGIONS)),
            open_for=draw(often(timedelta(days=2), timedelta(0), timedelta(minutes=30), timedelta(hours=6))),
            grace=draw(often(timedelta(0), HOUR, timedelta(hours=24))), announced=draw(often(True, False)),
            act_on_unmanaged=draw(st.booleans()), age=draw(often(timedelta(days=30), None, timedelta(0), HOUR,
                                                                 timedelta(hours=5, minutes=59), timedelta(hours=6)))))
    return made


policies = st.builds(
    make_policy, mode=often("enforce", "observe", "dry-run"),
    allowed_accounts=often(frozenset({ACCOUNT}), frozenset(), frozenset({OTHER_ACCOUNT}),
                           frozenset({ACCOUNT, OTHER_ACCOUNT})),
    allowed_regions=often(frozenset({"us-east-1"}), frozenset(REGIONS), frozenset({"us-west-2"}), frozenset()),
    min_resource_age=st.sampled_from([timedelta(0), HOUR, timedelta(hours=6)]),
    max_per_cycle=st.integers(0, 5), max_per_hour=often(20, 0, 1, 2, 4, 8), breaker_failures=st.integers(1, 3),
    breaker_cooldown=st.sampled_from([timedelta(minutes=10), HOUR]), notification_required=st.booleans())

outcomes = st.lists(st.tuples(st.sampled_from([DONE, FAILED]), offsets), max_size=4).map(
    lambda drawn: sorted(((status, NOW - ago) for status, ago in drawn), key=lambda o: o[1], reverse=True))
"""(status, finished_at) of the latest executions, newest first, as AuditLog.last_outcomes returns them."""


@st.composite
def cases(draw) -> dict:
    return {"candidates": draw(candidates()), "policy": draw(policies), "now": NOW,
            "started_this_cycle": draw(often(0, 1, 2, 6)), "started_last_hour": draw(often(0, 1, 3, 10)),
            "last_outcomes": draw(outcomes)}


def run(case: dict) -> list[Verdict]:
    return decide(**case)


def static_verdict(candidate: Candidate, policy: Policy) -> str | None:
    """What protection, scope, grace/announcement and age say, in DESIGN.md's order; None when all pass."""
    if has(candidate, PROTECT):
        return SKIPPED_PROTECTED
    if EXECUTORS[candidate.intent.action].destructive and not candidate.act_on_unmanaged and not has(candidate,
                                                                                                    MANAGED):
        return SKIPPED_UNMANAGED
    if NOW - candidate.due_from < candidate.grace or (policy.notification_required and not candidate.announced):
        return WAIT
    if NOW - (candidate.created_at or candidate.due_from) < policy.min_resource_age:
        return SKIPPED_YOUNG
    return None


# -- properties -----------------------------------------------------------------------------------------------------

def check_observe_decides_nothing(case: dict) -> None:
    assert run({**case, "policy": replace(case["policy"], mode="observe")}) == []


def check_one_verdict_per_resource_and_action_and_only_for_actionable_candidates(case: dict) -> None:
    verdicts = run(case)
    if case["policy"].mode == "observe":
        return
    assert all(v.result in RESULTS for v in verdicts)
    pairs = Counter((v.candidate.intent.resource_id, v.candidate.intent.action) for v in verdicts)
    assert all(n == 1 for n in pairs.values())
    assert all(v.candidate.existing_status in ACTIONABLE for v in verdicts)
    busy = {(c.intent.resource_id, c.intent.action) for c in case["candidates"]
            if c.existing_status not in ACTIONABLE}  # under way or finished for another finding
    actionable = [c for c in case["candidates"] if c.existing_status in ACTIONABLE
                  and (c.intent.resource_id, c.intent.action) not in busy]
    assert set(pairs) == {(c.intent.resource_id, c.intent.action) for c in actionable}
    for verdict in verdicts:  # of two findings asking the same, the one the caps would admit first gets the verdict
        intent = verdict.candidate.intent
        rivals = [c for c in actionable if (c.intent.resource_id, c.intent.action) == (intent.resource_id,
                                                                                         intent.action)]
        assert verdict.candidate == min(rivals, key=rank)


def check_static_gates_hold_back_in_order(case: dict) -> None:
    """Protected → skipped-protected; unmanaged destructive → skipped-unmanaged; grace/announcement → wait; young →
    skipped-young; each only once the gates before it passed."""
    policy = case["policy"]
    for verdict in run(case):
        expected = static_verdict(verdict.candidate, policy)
        if expected is not None:
            assert verdict.result == expected, (verdict, expected)
        else:
            assert verdict.result in (EXECUTE, PLAN, WAIT, SKIPPED_ACCOUNT, SKIPPED_BREAKER, SKIPPED_CAP)


def check_protected_resources_are_never_executed_or_planned(case: dict) -> None:
    for verdict in run(case):
        if has(verdict.candidate, PROTECT):
            assert verdict.result not in (EXECUTE, PLAN)


def check_an_execute_passed_every_gate(case: dict) -> None:
    policy = case["policy"]
    breaker = breaker_open(case["last_outcomes"], policy, NOW)
    for verdict in run(case):
        candidate, intent = verdict.candidate, verdict.candidate.intent
        if verdict.result != EXECUTE:
            continue
        assert policy.mode == "enforce" or candidate.existing_status == APPROVED
        assert intent.account_id in policy.allowed_accounts and intent.region in policy.allowed_regions
        assert not breaker
        assert not has(candidate, PROTECT)
        assert not EXECUTORS[intent.action].destructive or candidate.act_on_unmanaged or has(candidate, MANAGED)
        assert NOW - candidate.due_from >= candidate.grace
        assert candidate.announced or not policy.notification_required
        assert NOW - (candidate.created_at or candidate.due_from) >= policy.min_resource_age


def check_dry_run_executes_only_approved_and_plans_only_new(case: dict) -> None:
    case = {**case, "policy": replace(case["policy"], mode="dry-run")}
    for verdict in run(case):
        if verdict.result == EXECUTE:
            assert verdict.candidate.existing_status == APPROVED
        if verdict.result == PLAN:
            assert verdict.candidate.existing_status is None
        if static_verdict(verdict.candidate, case["policy"]) is None and verdict.candidate.existing_status == PLANNED:
            assert verdict.result == WAIT  # planned already: waits for a person


def check_outside_the_allow_list_nothing_executes(case: dict) -> None:
    policy = case["policy"]
    for verdict in run(case):
        intent = verdict.candidate.intent
        if intent.account_id not in policy.allowed_accounts or intent.region not in policy.allowed_regions:
            assert verdict.result != EXECUTE


def check_caps_admit_the_approved_and_costliest_first_and_no_more_than_they_allow(case: dict) -> None:
    policy = case["policy"]
    verdicts = run(case)
    executed = [v.candidate for v in verdicts if v.result == EXECUTE]
    capped = [v.candidate for v in verdicts if v.result == SKIPPED_CAP]
    room = max(0, min(policy.max_per_cycle - case["started_this_cycle"],
                      policy.max_per_hour - case["started_last_hour"]))
    assert len(executed) <= max(0, policy.max_per_cycle - case["started_this_cycle"])
    assert len(executed) <= max(0, policy.max_per_hour - case["started_last_hour"])
    assert len(executed) == min(room, len(executed) + len(capped))  # the caps leave no slot unused
    if executed and capped:
        assert max(map(rank, executed)) < min(map(rank, capped))


def check_an_open_breaker_stops_every_execution(case: dict) -> None:
    if not breaker_open(case["last_outcomes"], case["policy"], NOW):
        return
    verdicts = run(case)
    assert not [v for v in verdicts if v.result in (EXECUTE, SKIPPED_CAP)]


CHECKS = (check_observe_decides_nothing, check_one_verdict_per_resource_and_action_and_only_for_actionable_candidates,
          check_static_gates_hold_back_in_order, check_protected_resources_are_never_executed_or_planned,
          check_an_execute_passed_every_gate, check_dry_run_executes_only_approved_and_plans_only_new,
          check_outside_the_allow_list_nothing_executes,
          check_caps_admit_the_approved_and_costliest_first_and_no_more_than_they_allow,
          check_an_open_breaker_stops_every_execution)


@settings(max_examples=600, deadline=None)
@given(cases())
def test_gates_hold_over_random_candidates_and_policies(case: dict) -> None:
    """Every property above on each generated case (generation is the slow part, so it is shared)."""
    for verdict in run(case):
        event(verdict.result)
    for check in CHECKS:
        check(case)


@settings(max_examples=500, deadline=None)
@given(outcomes, policies)
def test_breaker_opens_after_enough_recent_failures_in_a_row(last: list, policy: Policy) -> None:
    newest_first = last[: policy.breaker_failures]
    expected = (len(newest_first) == policy.breaker_failures and all(s == FAILED for s, _ in newest_first)
                and NOW - newest_first[0][1] < policy.breaker_cooldown)
    assert breaker_open(last, policy, NOW) is expected


# -- examples -------------------------------------------------------------------------------------------------------


def results(verdicts: list[Verdict]) -> dict[str, str]:
    return {v.candidate.intent.key: v.result for v in verdicts}


def test_a_due_managed_candidate_executes_in_enforce_and_is_planned_in_dry_run() -> None:
    candidate = make_candidate()
    assert results(decide([candidate], make_policy(), NOW, 0, 0, [])) == {"k1": EXECUTE}
    assert results(decide([candidate], make_policy(mode="dry-run"), NOW, 0, 0, [])) == {"k1": PLAN}
    assert results(decide([replace(candidate, existing_status=PLANNED)], make_policy(mode="dry-run"), NOW, 0, 0,
                          [])) == {"k1": WAIT}
    assert results(decide([replace(candidate, existing_status=APPROVED)], make_policy(mode="dry-run"), NOW, 0, 0,
                          [])) == {"k1": EXECUTE}
    assert decide([candidate], make_policy(mode="observe"), NOW, 0, 0, []) == []


def test_protection_beats_everything_else() -> None:
    candidate = make_candidate(tags={"guard:protect": "True", "guard:managed": "true"}, status=APPROVED)
    assert results(decide([candidate], make_policy(), NOW, 0, 0, [])) == {"k1": SKIPPED_PROTECTED}


def test_unmanaged_resources_need_the_rule_to_opt_in_for_destructive_actions_only() -> None:
    unmanaged = {"owner": "ana"}
    policy = make_policy()
    assert results(decide([make_candidate(tags=unmanaged)], policy, NOW, 0, 0, [])) == {"k1": SKIPPED_UNMANAGED}
    assert results(decide([make_candidate(tags=unmanaged, act_on_unmanaged=True)], policy, NOW, 0, 0, [])) == {
        "k1": EXECUTE}
    stop = make_candidate(action="stop", resource_id="i-1", tags=unmanaged)  # reversible: no opt-in needed
    assert results(decide([stop], policy, NOW, 0, 0, [])) == {"k1": EXECUTE}


def test_grace_announcement_and_age() -> None:
    policy = make_policy(notification_required=True)
    assert results(decide([make_candidate(open_for=timedelta(hours=23))], policy, NOW, 0, 0, [])) == {"k1": WAIT}
    assert results(decide([make_candidate(announced=False)], policy, NOW, 0, 0, [])) == {"k1": WAIT}
    assert results(decide([make_candidate(age=timedelta(hours=5))], policy, NOW, 0, 0, [])) == {"k1": SKIPPED_YOUNG}
    # an EIP says nothing of its creation: the finding's first sighting stands in
    young_eip = make_candidate(age=None, open_for=timedelta(hours=2), grace=timedelta(0))
    assert results(decide([young_eip], policy, NOW, 0, 0, [])) == {"k1": SKIPPED_YOUNG}


def test_allow_list_and_breaker() -> None:
    elsewhere = make_candidate(region="eu-west-1")
    assert results(decide([elsewhere], make_policy(), NOW, 0, 0, [])) == {"k1": SKIPPED_ACCOUNT}
    other = make_candidate(account_id=OTHER_ACCOUNT)
    assert results(decide([other], make_policy(), NOW, 0, 0, [])) == {"k1": SKIPPED_ACCOUNT}
    failures = [(FAILED, NOW - timedelta(minutes=m)) for m in (1, 2, 3)]
    assert results(decide([make_candidate()], make_policy(), NOW, 0, 0, failures)) == {"k1": SKIPPED_BREAKER}
    assert not breaker_open(failures, make_policy(breaker_cooldown=timedelta(seconds=30)), NOW)
    assert not breaker_open([(FAILED, NOW), (DONE, NOW), (FAILED, NOW)], make_policy(), NOW)
    assert not breaker_open(failures[:2], make_policy(), NOW)


def test_the_cap_goes_to_the_approved_then_to_the_costliest() -> None:
    cheap = make_candidate(key="cheap", resource_id="r-cheap", waste=0.01)
    dear = make_candidate(key="dear", resource_id="r-dear", waste=2.0)
    unpriced = make_candidate(key="unpriced", resource_id="r-unpriced", waste=None)
    approved = make_candidate(key="approved", resource_id="r-approved", waste=0.001, status=APPROVED)
    verdicts = decide([cheap, unpriced, approved, dear], make_policy(max_per_cycle=2), NOW, 0, 0, [])
    assert results(verdicts) == {"approved": EXECUTE, "dear": EXECUTE, "cheap": SKIPPED_CAP,
                                 "unpriced": SKIPPED_CAP}
    # what the cycle or the hour already started counts against the caps
    assert results(decide([dear], make_policy(max_per_cycle=2), NOW, 2, 0, [])) == {"dear": SKIPPED_CAP}
    assert results(decide([dear], make_policy(max_per_hour=3), NOW, 0, 3, [])) == {"dear": SKIPPED_CAP}


def test_two_findings_asking_the_same_of_one_resource_get_one_verdict() -> None:
    first = make_candidate(key="a", waste=0.005)
    second = make_candidate(key="b", waste=0.005)
    assert results(decide([second, first], make_policy(), NOW, 0, 0, [])) == {"a": EXECUTE}
    # while one finding's action on the resource is under way, another finding's is not started
    under_way = make_candidate(key="c", status=PENDING)
    assert results(decide([second, under_way, first], make_policy(), NOW, 0, 0, [])) == {}
