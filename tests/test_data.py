"""Tests of the synthetic fab (bertlab.data): contracts the notebooks rely on."""
import collections
import re
import time

import numpy as np
import pytest

from bertlab.data import (
    ACTIONS,
    ALL_FABS,
    CAPSTONE_FAB,
    CAUSE_GIVEN_TYPE,
    ENTITY_LABELS,
    ENTITY_ROLES,
    FAB_STYLES,
    FABS,
    FAILURE_TYPES,
    LABEL_NOISE_RATE,
    LABELS,
    ROOT_CAUSES,
    SEVERITIES,
    SEVERITY_CUTS,
    STAGES,
    Entity,
    FailureReport,
    Splits,
    action_of,
    domain_corpus,
    generate_reports,
    make_splits,
    near_duplicate_key,
    severity_of,
    severity_score,
    to_records,
)
from bertlab.data import lexicon as lx

TASKS = ("failure_type", "severity", "root_cause", "action")


@pytest.fixture(scope="module")
def splits():
    return {fab: make_splits(fab, n_train=1000, n_val=200, n_test=400) for fab in FABS}


@pytest.fixture(scope="module")
def many():
    """A large sample of fab A for statistical checks."""
    return generate_reports(8000, "A", seed=3)


def test_public_constants():
    assert FABS == ("A", "B", "C", "D", "E")
    assert FAILURE_TYPES == ("voltage_degradation", "current_spike", "frequency_instability", "power_anomaly",
                             "temperature_issue", "timing_violation", "signal_integrity", "manufacturing_defect")
    assert SEVERITIES == ("low", "medium", "high")
    assert ACTIONS == ("debug", "replace", "adjust", "monitor", "escalate", "ignore")
    assert 12 <= len(ROOT_CAUSES) <= 18 and len(set(ROOT_CAUSES)) == len(ROOT_CAUSES)
    assert all(re.fullmatch(r"[a-z_]+", c) for c in ROOT_CAUSES)
    assert LABELS == {"failure_type": FAILURE_TYPES, "severity": SEVERITIES, "root_cause": ROOT_CAUSES,
                      "action": ACTIONS}
    assert 0 < LABEL_NOISE_RATE < 0.2


def test_deterministic_and_prefix_stable():
    a = generate_reports(200, "C", seed=7, split="test")
    b = generate_reports(200, "C", seed=7, split="test")
    assert a == b
    assert generate_reports(50, "C", seed=7, split="test") == a[:50]
    assert generate_reports(50, "C", seed=8, split="test") != a[:50]
    assert generate_reports(50, "C", seed=7, split="train") != a[:50]
    s1, s2 = make_splits("B", 200, 50, 100, seed=1), make_splits("B", 200, 50, 100, seed=1)
    assert s1 == s2
    # the test split does not depend on how much training data is asked for
    assert make_splits("B", 20, 10, 100, seed=1).test == s1.test
    assert make_splits("B", 100, 50, 100, seed=1).train == s1.train[:100]


@pytest.mark.parametrize("fab", FABS)
def test_labels_in_documented_sets(fab):
    for r in generate_reports(500, fab, split="test"):
        assert isinstance(r, FailureReport) and r.fab == fab
        for task in TASKS:
            assert getattr(r, task) in LABELS[task], (task, getattr(r, task))
            assert getattr(r, "clean_" + task) in LABELS[task]
            assert LABELS[task][r.label_id(task)] == getattr(r, task)
        assert r.phenomena[0] == r.clean_failure_type
        assert not set(r.phenomena) & set(r.ruled_out)
        assert r.stage in STAGES
        assert set(r.noisy) == {t for t in TASKS if getattr(r, t) != getattr(r, "clean_" + t)}


@pytest.mark.parametrize("fab", FABS)
def test_entity_spans_point_at_their_text(fab):
    patterns = {  # what each entity's text must look like
        "DEVICE": r"(?i)(dut[_-]?|d)\d{4}", "WAFER": r"(?i)w[-#]?\d{2}", "DIE": r"(?i)(\(\d+, ?\d+\)|x\d+y\d+|\d+/\d+)",
        "DOMAIN": r"[A-Z_]+", "VOLTAGE": r"(?i)-?\d+(\.\d+)? ?m?v", "CURRENT": r"(?i)\d+(\.\d+)? ?m?a",
        "FREQUENCY": r"(?i)\d+(\.\d+)? ?[mg]hz", "TEMPERATURE": r"(?i)-?\d+ ?(°c|c|deg)", "TIME": r"-?\d+ ?(ps|us|µs)",
    }
    seen = collections.Counter()
    for r in generate_reports(400, fab, split="test"):
        last = -1
        for e in r.entities:
            assert isinstance(e, Entity) and e.label in ENTITY_LABELS
            assert 0 <= e.start < e.end <= len(r.text) and e.start >= last, (r.text, e)
            span = r.text[e.start:e.end]
            assert re.fullmatch(patterns[e.label], span), (e.label, span, r.text)
            assert span == span.strip()
            last = e.end
            seen[e.label] += 1
        assert "\x01" not in r.text and "\x03" not in r.text
    assert set(seen) == set(ENTITY_LABELS), seen


def test_to_records_flat_and_dataframe_ready(splits):
    pd = pytest.importorskip("pandas")
    recs = to_records(splits["A"].test[:20])
    df = pd.DataFrame(recs)
    assert {"id", "fab", "text", *TASKS, "clean_failure_type", "entities"} <= set(df.columns)
    assert len(df) == 20 and df["id"].is_unique
    r0 = splits["A"].test[0]
    assert recs[0]["entities"] == [{"start": e.start, "end": e.end, "label": e.label, "role": e.role}
                                   for e in r0.entities]
    try:
        import datasets
    except ImportError:
        return
    ds = datasets.Dataset.from_list(recs)
    assert ds[0]["text"] == r0.text


def test_no_overlap_across_splits(splits):
    from sklearn.feature_extraction.text import TfidfVectorizer

    for fab, s in splits.items():
        assert isinstance(s, Splits)
        assert (len(s.train), len(s.validation), len(s.test)) == (1000, 200, 400)
        texts = {name: [r.text for r in part] for name, part in s.as_dict().items()}
        keys = {name: {near_duplicate_key(t) for t in ts} for name, ts in texts.items()}
        for name, ts in texts.items():
            assert len(keys[name]) == len(ts), f"near-duplicates inside {fab}/{name}"
        assert not keys["train"] & keys["test"] and not keys["train"] & keys["validation"]
        assert not keys["validation"] & keys["test"]
        ids = [r.id for part in s for r in part]
        assert len(set(ids)) == len(ids)
        # no near-duplicate by content either: nearest train neighbour of each test report
        vec = TfidfVectorizer(token_pattern=r"[a-z]+").fit(texts["train"])
        sim = (vec.transform(texts["test"]) @ vec.transform(texts["train"]).T).max(axis=1).toarray().ravel()
        assert sim.max() < 0.9, (fab, sim.max())


def test_near_duplicate_key_ignores_ids_and_values():
    a = "DUT_0142 W12 die (3,7): Vdd droop, 0.72V vs 0.80V nominal."
    b = "DUT_2001 W03 die (1,11): vdd droop, 0.68 V vs 0.75 V nominal"
    assert near_duplicate_key(a) == near_duplicate_key(b)
    assert near_duplicate_key(a) != near_duplicate_key(a.replace("droop", "spike"))


def test_heldout_paraphrases_never_in_train():
    held = [p.lower() for pools in lx.PHENOMENA.values() for p in pools["heldout"]]
    frames = [lx.OBSERVE_M, lx.OBSERVE, lx.NEGATE_M, lx.NEGATE, lx.ATTRIBUTE, lx.ATTRIBUTE2]
    # the longest literal piece of each held-out frame identifies it
    held += [max(re.split(r"\{\w+\}", f), key=len).strip(" .;:,").lower() for fr in frames for f in fr["heldout"]]
    train = [r.text.lower() for fab in FABS for r in generate_reports(1000, fab, split="train")]
    for h in held:
        assert not any(h in t for t in train), h
    test = [r for fab in FABS for r in generate_reports(1000, fab, split="test")]
    assert 0.2 < np.mean([r.heldout for r in test]) < 0.9
    assert sum(any(h in r.text.lower() for h in held) for r in test) > 100


def test_noise_rate_matches_documentation(many):
    for task in TASKS:
        rate = np.mean([getattr(r, task) != getattr(r, "clean_" + task) for r in many])
        assert abs(rate - LABEL_NOISE_RATE) < 0.01, (task, rate)
    # annotators mostly disagree about which phenomenon is primary
    flipped = [r for r in many if "failure_type" in r.noisy and len(r.phenomena) > 1]
    assert np.mean([r.failure_type in r.phenomena[1:] for r in flipped]) == 1.0


def test_root_cause_depends_on_failure_type(many):
    tilt = FAB_STYLES["A"].cause_tilt
    by_type = collections.defaultdict(collections.Counter)
    for r in many:
        by_type[r.clean_failure_type][r.clean_root_cause] += 1
    for ftype, counts in by_type.items():
        table = {c: w * tilt.get(c, 1.0) for c, w in CAUSE_GIVEN_TYPE[ftype].items()}
        assert set(counts) <= set(table), (ftype, set(counts) - set(table))
        n, z = sum(counts.values()), sum(table.values())
        tv = 0.5 * sum(abs(counts[c] / n - w / z) for c, w in table.items())
        assert tv < 0.06, (ftype, tv)   # the empirical P(cause | type) is the documented one
        # no cause determines the type, no type a single cause
        assert counts.most_common(1)[0][1] / n < 0.5
    types_per_cause = collections.Counter(c for t in CAUSE_GIVEN_TYPE for c in CAUSE_GIVEN_TYPE[t])
    assert min(types_per_cause.values()) >= 2 and np.median(list(types_per_cause.values())) >= 3


def test_severity_and_action_follow_their_rules(many):
    for r in many:
        assert r.clean_severity == severity_of(r.clean_failure_type, r.clean_root_cause, r.stage, r.impact)
        score = severity_score(r.clean_failure_type, r.clean_root_cause, r.stage, r.impact)
        assert -5 <= score <= 8 and (score <= SEVERITY_CUTS[0]) == (r.clean_severity == "low")
        assert r.clean_action == action_of(r.clean_severity, r.clean_root_cause, r.stage, r.fab)
    # the facts behind severity are in the text: fallout of several units is always stated
    for r in many[:3000]:
        if r.impact == "lot":
            assert re.search(r"\d+% (fallout|fail)", r.text), r.text
        if r.impact == "few":
            assert re.search(r"\b\d+ ?(/|of|out of) ?\d+", r.text), r.text
    # statistically: later stages are more severe, test-setup errors are harmless
    sev = collections.defaultdict(list)
    for r in many:
        sev[r.stage].append(SEVERITIES.index(r.clean_severity))
    assert np.mean(sev["customer_return"]) > np.mean(sev["final_test"]) > np.mean(sev["wafer_sort"])
    setup = [r for r in many if r.clean_root_cause == "test_setup_error"]
    assert np.mean([r.clean_action in ("ignore", "monitor") for r in setup]) == 1.0
    high = collections.Counter(r.clean_action for r in many if r.clean_severity == "high")
    low = collections.Counter(r.clean_action for r in many if r.clean_severity == "low")
    assert set(high) <= {"replace", "escalate", "monitor"} and "replace" not in low and "escalate" not in low
    # no task is a function of another alone
    for a, b in (("clean_failure_type", "clean_severity"), ("clean_root_cause", "clean_action"),
                 ("clean_severity", "clean_action")):
        pairs = collections.defaultdict(set)
        for r in many:
            pairs[getattr(r, a)].add(getattr(r, b))
        assert max(len(v) for v in pairs.values()) > 1


def test_fabs_differ_in_style_and_mix():
    texts = {fab: " ".join(r.text for r in generate_reports(300, fab)) for fab in FABS}
    assert "Vdd droop" in texts["A"] and "Vdd droop" not in texts["B"]
    assert "supply voltage degradation" in texts["B"].lower() and "supply voltage degradation" not in texts["A"].lower()
    assert "->" in texts["C"] and "Severity" in texts["D"]
    # fab E writes lower case: everything but the entities
    for r in generate_reports(300, "E"):
        bounds = zip((Entity(0, 0, ""), *r.entities), (*r.entities, Entity(len(r.text), 0, "")))
        rest = "".join(r.text[a.end:b.start] for a, b in bounds)
        assert rest == rest.lower(), r.text
    mixes = {fab: collections.Counter(r.clean_failure_type for r in generate_reports(1500, fab)) for fab in FABS}
    assert mixes["A"].most_common(1)[0][0] != mixes["C"].most_common(1)[0][0]


def test_several_phenomena_and_distractors():
    rs = generate_reports(2000, "A", split="test")
    assert 0.3 < np.mean([len(r.phenomena) > 1 for r in rs]) < 0.7
    assert 0.3 < np.mean([len(r.ruled_out) > 0 for r in rs]) < 0.8
    assert np.mean(["ruled out" in r.text or "no " in r.text.lower() for r in rs]) > 0.5


def test_corpus_documents_and_no_test_report_inside(splits):
    docs = domain_corpus(2000, seed=0)
    assert docs == domain_corpus(2000, seed=0) and docs != domain_corpus(2000, seed=1)
    assert len(docs) == 2000
    assert all(isinstance(d, list) and len(d) >= 2 and all(isinstance(s, str) and s for s in d) for d in docs)
    corpus_sents = {s.strip().lower() for d in docs for s in d}
    joined = "\n".join(" ".join(d) for d in docs).lower()
    for fab in FABS:
        for r in splits[fab].test:
            assert r.text.lower() not in joined
            for sent in re.split(r"(?<=[.!?])\s+", r.text):
                if len(sent.split()) >= 5:
                    assert sent.strip().lower() not in corpus_sents, sent
    kinds = collections.Counter(d[0].split(":")[0].split()[0] for d in docs)
    assert kinds["Glossary"] > 100 and kinds["Step"] > 100 and kinds["The"] > 100


@pytest.mark.parametrize("call, arg", [
    (lambda: generate_reports(10, fab="Z"), "fab"),
    (lambda: generate_reports(-1), "n"),
    (lambda: generate_reports(2.5), "n"),
    (lambda: generate_reports("10"), "n"),
    (lambda: generate_reports(True), "n"),
    (lambda: generate_reports(10, seed=-3), "seed"),
    (lambda: generate_reports(10, split="dev"), "split"),
    (lambda: generate_reports(10, fab=1), "fab"),
    (lambda: make_splits("Q"), "fab"),
    (lambda: make_splits("A", n_train=-5), "n_train"),
    (lambda: make_splits("A", n_val=1.0), "n_val"),
    (lambda: make_splits("A", n_test=None), "n_test"),
    (lambda: domain_corpus(-2), "n_docs"),
    (lambda: domain_corpus(5, seed="x"), "seed"),
    (lambda: to_records([1, 2]), "reports"),
    (lambda: generate_reports(2)[0].label_id("colour"), "task"),
])
def test_bad_input_names_the_argument(call, arg):
    with pytest.raises((TypeError, ValueError)) as err:
        call()
    assert arg in str(err.value), str(err.value)


def test_generation_speed():
    t = time.perf_counter()
    rs = generate_reports(100_000, "A")
    dt = time.perf_counter() - t
    print(f"100,000 reports in {dt:.1f} s ({len(rs) / dt:,.0f} reports/s)")
    assert len(rs) == 100_000 and dt < 60


def test_entity_roles_left_every_report_unchanged():
    """Roles ride in the entity marks and draw no random number: texts, labels and spans are
    byte-identical to the generator before roles (hash computed on main at 26eb6aa)."""
    import hashlib
    h = hashlib.sha256()
    for fab in FABS:
        for split in ("train", "test"):
            for r in generate_reports(400, fab=fab, split=split):
                h.update(r.text.encode())
                h.update(repr((r.failure_type, r.severity, r.root_cause, r.action, r.noisy, r.heldout)).encode())
                h.update(repr([(e.start, e.end, e.label) for e in r.entities]).encode())
    assert h.hexdigest() == "4a048264b4e09a1079bf373ea123c22430f5e5e67eb9ac820413188907eb7b40", (
        "the reports changed: every cached model and checked range of notebooks 00-12 depends on them")


def test_entity_roles_follow_the_slot_they_filled():
    seen = collections.Counter()
    for fab in FABS:
        for r in generate_reports(300, fab=fab, split="test"):
            for e in r.entities:
                assert e.role in ENTITY_ROLES.get(e.label, ("",)), f"{e.label} has role {e.role!r}"
                seen[e.label, e.role] += 1
    assert all(seen[t, role] > 0 for t, roles in ENTITY_ROLES.items() for role in roles), seen
    r = next(r for r in generate_reports(50, fab="A") if any(e.role == "spec" for e in r.entities))
    spec = next(e for e in r.entities if e.role == "spec")
    assert re.match(r"\s*(nominal|max|target|limit|spec)", r.text[spec.end:]) or re.search(
        r"(vs|against|limit|should be|NOM|TGT|LIM|rated|must be)\s*(a limit of |a target of )?$",
        r.text[:spec.start]), r.text
    # a domain of the primary phenomenon: the report names that phenomenon as present
    for r in generate_reports(200, fab="B"):
        for e in r.entities:
            if e.label == "DOMAIN" and e.role == "ruled_out":
                assert r.ruled_out, "a ruled-out domain in a report that rules nothing out"


def test_capstone_fab_has_its_own_style_mix_and_noise():
    """Fab F (notebook 14): not among the course's fabs, deterministic, its own wording, action mix
    and annotator; adding it changed no report of A-E (test_entity_roles_left_every_report_unchanged)."""
    assert CAPSTONE_FAB == "F" and CAPSTONE_FAB not in FABS and ALL_FABS == FABS + ("F",)
    f = generate_reports(3000, "F", seed=3)
    assert f == generate_reports(3000, "F", seed=3) and f != generate_reports(3000, "F", seed=4)
    assert make_splits("F", 50, 10, 20, seed=1) == make_splits("F", 50, 10, 20, seed=1)
    assert all(" | " in r.text and r.text.startswith("CQ-") for r in f), "F writes tickets: fields between ' | '"
    assert not any(" | " in r.text for fab in FABS for r in generate_reports(300, fab))
    # its own annotator: noisier than A-E's, on every task
    for task in TASKS:
        rate = np.mean([getattr(r, task) != getattr(r, "clean_" + task) for r in f])
        assert abs(rate - FAB_STYLES["F"].label_noise) < 0.015 and rate > LABEL_NOISE_RATE + 0.01, (task, rate)
    # its own policy and mix: every customer return that is not low (and no test-setup error) escalates,
    # so escalate is F's most frequent action, which it is in no other fab but D
    for r in f:
        assert r.clean_action == action_of(r.clean_severity, r.clean_root_cause, r.stage, "F")
        if r.stage == "customer_return" and r.clean_severity != "low" and r.clean_root_cause != "test_setup_error":
            assert r.clean_action == "escalate", r
    mix = collections.Counter(r.clean_action for r in f)
    assert mix.most_common(1)[0][0] == "escalate" and mix["escalate"] > 0.35 * len(f)
    for fab in ("A", "B", "C", "E"):
        assert collections.Counter(r.clean_action for r in generate_reports(1500, fab)).most_common(1)[0][0] != "escalate"
    # no jargon of A-E: a phrase only one of them uses never appears in F
    jargon = {p for pool in lx.PHENOMENA.values() for fab in FABS for p in pool.get(fab, []) if len(p) > 8}
    core = {p for pool in lx.PHENOMENA.values() for p in pool.get("core", []) + pool.get("heldout", [])}
    text = " ".join(r.text for r in f[:500])
    assert not [p for p in jargon - core if f" {p} " in text and not any(p in c for c in core)][:1]
