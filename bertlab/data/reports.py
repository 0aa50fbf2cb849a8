"""Failure reports: labels, the writer that turns them into text, the splits.

The generative story and every dependency are documented in the package
docstring (``bertlab/data/__init__.py``); the tables below are that story.
"""
from __future__ import annotations

import bisect
import contextlib
import gc
import itertools
import math
import re
from dataclasses import asdict, dataclass, field
from random import Random

from . import lexicon as lx
from .fabs import FAB_STYLES

FABS = ("A", "B", "C", "D", "E")
#: The capstone's fab (notebook 14): not in FABS, so nothing before the capstone shows it.
CAPSTONE_FAB = "F"
ALL_FABS = FABS + (CAPSTONE_FAB,)
FAILURE_TYPES = ("voltage_degradation", "current_spike", "frequency_instability", "power_anomaly",
                 "temperature_issue", "timing_violation", "signal_integrity", "manufacturing_defect")
SEVERITIES = ("low", "medium", "high")
ROOT_CAUSES = tuple(lx.CAUSES)
ACTIONS = ("debug", "replace", "adjust", "monitor", "escalate", "ignore")
ENTITY_LABELS = ("DEVICE", "WAFER", "DIE", "DOMAIN", "VOLTAGE", "CURRENT", "FREQUENCY", "TEMPERATURE", "TIME")
#: Roles a span can play, per entity type (identifiers have none).
ENTITY_ROLES = {"DOMAIN": ("primary", "secondary", "ruled_out"), "CURRENT": ("measured", "in_spec", "spec"),
                "TIME": ("measured", "in_spec")} | {
    t: ("measured", "in_spec", "spec", "condition") for t in ("VOLTAGE", "FREQUENCY", "TEMPERATURE")}
STAGES = tuple(lx.STAGES)
SPLITS = ("train", "validation", "test")
LABELS = {"failure_type": FAILURE_TYPES, "severity": SEVERITIES, "root_cause": ROOT_CAUSES, "action": ACTIONS}

#: Chance that an annotator's label differs from the clean label, per task and report, in fabs A-E
#: (each fab's ``label_noise``; the capstone's fab F has its own).
LABEL_NOISE_RATE = 0.05
#: Chance that a phrase or frame comes from the held-out paraphrases (validation/test only).
HELDOUT_RATE = 0.15
#: Chance that a report names a suspected root cause that was ruled out.
CAUSE_DISTRACTOR_RATE = 0.6
#: Chance that a mention of a phenomenon (present or ruled out) comes with a measurement.
MEASURE_RATE = 0.4

# P(root cause | failure type): physics, shared by all fabs (a fab's cause_tilt
# reweights it). Spread on purpose: most mechanisms can show up as several
# failure types, so naming the cause does not give the type away.
CAUSE_GIVEN_TYPE = {
    "voltage_degradation": {"ir_drop": 22, "electromigration": 16, "nbti": 14, "contact_resistance": 14,
                            "gate_oxide_breakdown": 10, "process_variation": 8, "latch_up": 6,
                            "bond_wire_failure": 5, "test_setup_error": 5},
    "current_spike": {"latch_up": 22, "esd_damage": 20, "gate_oxide_breakdown": 16, "electromigration": 10,
                      "hot_carrier_injection": 8, "bond_wire_failure": 8, "particle_contamination": 6,
                      "crosstalk": 5, "test_setup_error": 5},
    "frequency_instability": {"pll_jitter": 25, "process_variation": 14, "nbti": 12, "hot_carrier_injection": 10,
                              "thermal_interface": 10, "ir_drop": 10, "crosstalk": 8, "test_setup_error": 8},
    "power_anomaly": {"process_variation": 18, "latch_up": 14, "gate_oxide_breakdown": 14, "thermal_interface": 12,
                      "ir_drop": 10, "contact_resistance": 10, "particle_contamination": 8, "esd_damage": 8,
                      "test_setup_error": 6},
    "temperature_issue": {"thermal_interface": 25, "process_variation": 12, "bond_wire_failure": 12,
                          "latch_up": 12, "electromigration": 10, "contact_resistance": 8, "ir_drop": 8,
                          "test_setup_error": 8},
    "timing_violation": {"process_variation": 22, "nbti": 18, "hot_carrier_injection": 16, "crosstalk": 12,
                         "ir_drop": 12, "pll_jitter": 8, "contact_resistance": 6, "test_setup_error": 6},
    "signal_integrity": {"crosstalk": 28, "bond_wire_failure": 14, "contact_resistance": 12, "esd_damage": 10,
                         "pll_jitter": 10, "ir_drop": 8, "process_variation": 8, "test_setup_error": 6},
    "manufacturing_defect": {"particle_contamination": 26, "process_variation": 14, "bond_wire_failure": 12,
                             "contact_resistance": 12, "esd_damage": 10, "gate_oxide_breakdown": 10,
                             "electromigration": 8, "test_setup_error": 4},
}

# Severity = low / medium / high by thresholds on a score that adds what the
# report states: how bad the failure type is, the mechanism, where it was
# caught and how many units fail.
TYPE_SEVERITY = dict(zip(FAILURE_TYPES, (1, 2, 1, 1, 2, 1, 0, 1)))
CAUSE_SEVERITY = {c: 0 for c in ROOT_CAUSES} | {
    "electromigration": 1, "gate_oxide_breakdown": 1, "esd_damage": 1, "latch_up": 2, "thermal_interface": 1,
    "bond_wire_failure": 1, "test_setup_error": -3}
STAGE_SEVERITY = {"wafer_sort": -1, "final_test": 0, "burn_in": 0, "qualification": 1, "customer_return": 2}
IMPACT_SEVERITY = {"single": -1, "few": 0, "lot": 2}
SEVERITY_CUTS = (0, 2)  # score <= 0: low, <= 2: medium, else high

# Groups of root causes that the action policy treats alike.
DAMAGE = frozenset({"electromigration", "gate_oxide_breakdown", "esd_damage", "latch_up", "thermal_interface",
                    "bond_wire_failure", "particle_contamination"})
TUNABLE = frozenset({"process_variation", "pll_jitter", "ir_drop", "crosstalk", "contact_resistance"})
AGING = frozenset({"nbti", "hot_carrier_injection"})

# Which phenomena show up together (symmetric): a droop causes timing fails,
# a spike heats the die, and so on. Used for secondary and ruled-out phenomena.
_PAIRS = {("voltage_degradation", "timing_violation"): 4, ("voltage_degradation", "frequency_instability"): 3,
          ("voltage_degradation", "power_anomaly"): 3, ("current_spike", "power_anomaly"): 4,
          ("current_spike", "temperature_issue"): 3, ("power_anomaly", "temperature_issue"): 4,
          ("frequency_instability", "timing_violation"): 3, ("signal_integrity", "timing_violation"): 3,
          ("signal_integrity", "frequency_instability"): 3, ("current_spike", "voltage_degradation"): 3,
          ("temperature_issue", "timing_violation"): 2, ("temperature_issue", "frequency_instability"): 2,
          ("voltage_degradation", "signal_integrity"): 2}
AFFINITY = {a: {b: 0 if a == b else _PAIRS.get((a, b), _PAIRS.get((b, a), 1)) for b in FAILURE_TYPES}
            for a in FAILURE_TYPES}

# Where an annotator who disagrees puts an action instead.
_ACTION_CONFUSION = {"debug": ("escalate", "adjust"), "replace": ("escalate",), "adjust": ("debug", "monitor"),
                     "monitor": ("ignore", "adjust"), "escalate": ("debug", "replace"), "ignore": ("monitor",)}


def severity_score(failure_type: str, root_cause: str, stage: str, impact: str) -> int:
    """The clean severity score: the summed scores of the four factors (an integer, -5 to 8)."""
    return (TYPE_SEVERITY[failure_type] + CAUSE_SEVERITY[root_cause] + STAGE_SEVERITY[stage]
            + IMPACT_SEVERITY[impact])


def severity_of(failure_type: str, root_cause: str, stage: str, impact: str) -> str:
    """The clean severity: :func:`severity_score` cut at ``SEVERITY_CUTS``."""
    score = severity_score(failure_type, root_cause, stage, impact)
    return "low" if score <= SEVERITY_CUTS[0] else "medium" if score <= SEVERITY_CUTS[1] else "high"


def action_of(severity: str, root_cause: str, stage: str, fab: str) -> str:
    """The clean recommended action: each fab's disposition policy."""
    if root_cause == "test_setup_error":
        return "ignore" if severity == "low" else "monitor"
    if fab == "F" and stage == "customer_return" and severity != "low":
        return "escalate"      # the foundry (F) escalates every customer return it must answer for
    if severity == "high":
        if root_cause in DAMAGE and (fab != "D" or stage == "customer_return"):
            return "replace"   # automotive (D) only replaces what a customer returned
        return "escalate"
    if severity == "medium":
        if root_cause in TUNABLE:
            return "adjust"
        if root_cause in AGING:
            return "monitor"
        return "escalate" if fab == "D" else "debug"
    return "adjust" if root_cause in TUNABLE else "monitor"


@dataclass(frozen=True, slots=True)
class Entity:
    """A labelled span: ``text[start:end]`` is the entity (character offsets).

    ``role`` says which slot of the report the span filled (``ENTITY_ROLES``; "" for
    identifiers): a value measured on a failing phenomenon, an in-spec reading that
    rules one out, the spec it is compared with, or a test condition; the supply
    domain of the primary, a secondary or a ruled-out phenomenon. Roles are the
    generator's truth: annotator noise touches the class labels only.
    """
    start: int
    end: int
    label: str
    role: str = ""


@dataclass(frozen=True, slots=True)
class FailureReport:
    """One report and its labels.

    ``failure_type`` .. ``action`` are the annotator's labels (with noise at
    ``LABEL_NOISE_RATE``); ``clean_*`` are the labels the generator wrote the
    text from. ``stage`` and ``impact`` (single / few / lot) are the facts that
    set the severity with the type and cause. ``phenomena`` lists the failure types the text reports as
    present (primary first), ``ruled_out`` those it mentions as absent.
    """
    id: str
    fab: str
    text: str
    failure_type: str
    severity: str
    root_cause: str
    action: str
    entities: tuple[Entity, ...]
    clean_failure_type: str
    clean_severity: str = ""
    clean_root_cause: str = ""
    clean_action: str = ""
    split: str = "train"
    stage: str = ""
    impact: str = ""
    phenomena: tuple[str, ...] = ()
    ruled_out: tuple[str, ...] = ()
    heldout: bool = False
    noisy: tuple[str, ...] = field(default=())   # tasks whose label the annotator got "wrong"

    def label_id(self, task: str = "failure_type") -> int:
        """Index of this report's label for ``task`` in ``LABELS[task]``."""
        if task not in LABELS:
            raise ValueError(f"task must be one of {tuple(LABELS)}, got {task!r}")
        return LABELS[task].index(getattr(self, task))


class _Pick:
    """Weighted choice from fixed weights, faster than Random.choices per call."""
    __slots__ = ("items", "cum", "total")

    def __init__(self, weights: dict):
        self.items = tuple(k for k, w in weights.items() if w > 0)
        self.cum = list(itertools.accumulate(weights[k] for k in self.items))
        self.total = self.cum[-1]

    def __call__(self, rng: Random):
        return self.items[bisect.bisect_right(self.cum, rng.random() * self.total)]


def _mark(label: str, s: str, role: str = "") -> str:
    # Entities travel inside the text between control characters until _resolve
    # strips them and records their offsets: spans stay right whatever the frame.
    # The role rides in the mark too (no random draw), so adding it changed no report.
    return f"\x01{label}:{role}\x02{s}\x03" if role else f"\x01{label}\x02{s}\x03"


# Entities are immutable and repeat across reports (same offsets, same label):
# sharing them saves most of the cost of building a report's entities.
_ENTITIES: dict = {}


_MARKS = re.compile("\x01([A-Z]+)(?::([a-z_]+))?\x02([^\x03]*)\x03")
_MARK_CHARS = re.compile("\x01[A-Z]+(?::[a-z_]+)?\x02|\x03")
# Which role a phenomenon's sentence gives the domain it names.
_DOMAIN_ROLE = {True: "\x01DOMAIN:primary\x02", False: "\x01DOMAIN:secondary\x02", None: "\x01DOMAIN:ruled_out\x02"}


def _resolve(raw: str, lower: bool = False) -> tuple[str, tuple[Entity, ...]]:
    """Strip the entity marks from ``raw``; return the text and its entities.

    ``lower`` lower-cases everything but the entities (fab E's style)."""
    parts = _MARKS.split(raw)   # literal, label, role, value, literal, label, role, value, ..., literal
    ents, n, cache = [], 0, _ENTITIES
    for k in range(0, len(parts) - 1, 4):
        if lower:
            parts[k] = parts[k].lower()
        n += len(parts[k])
        end = n + len(parts[k + 3])
        key = (n, end, parts[k + 1], parts[k + 2] or "")
        e = cache.get(key)
        if e is None:
            e = cache[key] = Entity(*key)
        ents.append(e)
        n = end
    if not lower:
        return _MARK_CHARS.sub("", raw), tuple(ents)
    parts[-1] = parts[-1].lower()
    del parts[1::4], parts[1::3]   # the labels, then the roles
    return "".join(parts), tuple(ents)


class _Slots(dict):
    """format_map mapping: the slots given to ``say``, then the report's fixed
    slots (``base``), then values made on demand (``make``)."""
    __slots__ = ("base", "make")

    def __missing__(self, key):
        v = self.base.get(key)
        return self.make[key]() if v is None else v


class _Writer:
    """Writes the reports of one fab and split from one random stream.

    Hot path (100k reports in seconds): phrases and frames are drawn with one
    random number from a precomputed table per pool, see ``_table``.
    """

    def __init__(self, fab: str, split: str, seed: int):
        self.st = st = FAB_STYLES[fab]
        self.fab, self.split, self.seed = fab, split, seed
        self.rng = Random(f"bertlab|{fab}|{split}|{seed}")
        self.rand = self.rng.random
        self.lower = fab == "E"
        self.p_held = 0.0 if split == "train" else HELDOUT_RATE
        self.tables: dict = {}
        self.pick_type = _Pick(st.type_mix)
        self.pick_cause = {t: _Pick({c: w * st.cause_tilt.get(c, 1.0) for c, w in cs.items()})
                           for t, cs in CAUSE_GIVEN_TYPE.items()}
        self.pick_other = {t: _Pick(AFFINITY[t]) for t in FAILURE_TYPES}
        self.pick_stage = _Pick(st.stage_mix)
        self.pick_impact = _Pick(st.impact_mix)
        self.pick_nsec = _Pick(dict(enumerate(st.n_secondary)))
        self.pick_nneg = _Pick(dict(enumerate(st.n_ruled_out)))
        self.pick_nfill = _Pick(dict(enumerate(st.n_filler)))
        self.pick_name = _Pick(dict(enumerate(st.p_cause_name)))
        self.slots = _Slots()
        bad, ok = self._value_tables()
        ids = st.ids
        self.id_tabs = {"dev": [_mark("DEVICE", ids["dev"].format(i)) for i in range(1, 3000)],
                        "wafer": [_mark("WAFER", ids["wafer"].format(i)) for i in range(1, 26)],
                        "die": [_mark("DIE", ids["die"].format(x, y)) for x in range(12) for y in range(12)]}
        self.tcond = bad["tcond"]
        methods = {name[3:]: getattr(self, name) for name in dir(self) if name.startswith("_s_")}
        self.make_bad, self.make_ok = ({k: lambda t=t, n=len(t), rand=self.rand: t[int(rand() * n)]
                                        for k, t in values.items()} | methods for values in (bad, ok))
        self.slots.make = self.make_bad

    # -- choosing words -------------------------------------------------------
    def _table(self, pools: dict):
        """(items, cumulative weights, index of the first held-out item) for a pool.

        P(held-out) = p_held; else P(this fab's jargon) = own, P(core) = 1 - own;
        uniform within each.
        """
        t = self.tables.get(id(pools))
        if t is None:
            core = pools.get("core", [])
            own = pools.get(self.fab, [])
            held = pools.get("heldout", []) if self.p_held else []
            p_own = self.st.own if core and own else (1.0 if own else 0.0)
            rest = 1.0 - (self.p_held if held else 0.0)
            items, weights = [], []
            for group, p in ((own, rest * p_own), (core, rest * (1 - p_own)), (held, 1 - rest)):
                for x in group:
                    items.append(x)
                    weights.append(p / len(group))
            t = self.tables[id(pools)] = (items, list(itertools.accumulate(weights)), len(own) + len(core))
        return t

    def _pick(self, pools: dict) -> str:
        items, cum, n_seen = self.tables.get(id(pools)) or self._table(pools)
        i = bisect.bisect_right(cum, self.rand() * cum[-1])
        if i >= n_seen:
            self.used_heldout = True
        return items[i]

    def _choice(self, seq):
        return seq[int(self.rand() * len(seq))]

    def phrase(self, ftype: str) -> str:
        return self._pick(lx.PHENOMENA[ftype])

    def say(self, frames: dict, cap: bool = True, **given) -> str:
        """Fill a frame drawn from ``frames``: ``given`` slots, then the report's
        fixed slots (``self.base``), then per-sentence values made on demand."""
        slots = self.slots
        slots.clear()
        slots.update(given)
        text = self._pick(frames).format_map(slots)
        if cap and not self.lower and text[0].islower():
            text = text[0].upper() + text[1:]
        return text

    def measure(self, ftype: str, ok: bool) -> str:
        """A reading typical of ``ftype``: out of spec, or in spec when ``ok``."""
        if not ok:
            return self.say(lx.MEASURES[ftype], cap=False)
        self.slots.make = self.make_ok
        try:
            return self.say(lx.MEASURES[ftype], cap=False)
        finally:
            self.slots.make = self.make_bad

    def mention(self, ftype: str, present: bool) -> str:
        """A sentence reporting ``ftype`` as observed (``present``) or ruled out."""
        self.r_type = ftype
        if self.rand() < MEASURE_RATE:
            m = self.measure(ftype, ok=not present)
            s = self.say(lx.OBSERVE_M if present else lx.NEGATE_M, p=self.phrase(ftype), m=m)
            if not present:
                s = s.replace(":measured\x02", ":in_spec\x02")
        else:
            s = self.say(lx.OBSERVE if present else lx.NEGATE, p=self.phrase(ftype))
        # The domain's role comes from the sentence it sits in: no new random draw.
        return s.replace("\x01DOMAIN\x02", _DOMAIN_ROLE[(ftype == self.r_primary) if present else None])

    # -- values, entities and other slots (made by _Slots) --------------------
    def _formatted(self, kind: str, label: str, values, role: str = "measured") -> list:
        """Every value in ``values`` in every format the fab uses, entity-marked.

        Drawing from this list is the same as drawing a value, then a format,
        uniformly; precomputing it keeps the hot path cheap.
        """
        out = []
        for f in self.st.formats[kind]:
            for x in values:
                if kind == "v":
                    s = f.format(x, mv=int(round(x * 1000)))
                elif kind == "f":
                    s = f.format(x, mhz=int(round(x * 1000)))
                elif kind == "i":
                    s = f.format(x, a=x / 1000)
                else:
                    s = f.format(x)
                out.append(_mark(label, s, role))
        return out

    def _value_tables(self) -> tuple[dict, dict]:
        """Slot name -> list of marked values to draw from, for out-of-spec
        readings and for in-spec ones (a ruled-out phenomenon)."""
        fv, V, I, F, T, TIME = self._formatted, "VOLTAGE", "CURRENT", "FREQUENCY", "TEMPERATURE", "TIME"
        # per nominal: (nominal, out of spec, in spec)
        self.v_tabs = {v: (fv("v", V, [v], "spec"), fv("v", V, [v * (0.84 + 0.01 * k) for k in range(14)]),
                           fv("v", V, [v * (0.99 + 0.005 * k) for k in range(6)])) for v in _V_NOM}
        self.f_tabs = {f: (fv("f", F, [f], "spec"), fv("f", F, [f * (0.80 + 0.01 * k) for k in range(19)]),
                           fv("f", F, [f * (0.99 + 0.005 * k) for k in range(3)])) for f in _F_NOM}
        shared = {"ilim": fv("i", I, range(100, 200, 10), "spec"), "iqlim": fv("i", I, (5, 8, 10, 15), "spec"),
                  "tcmax": fv("tc", T, (105, 110, 125), "spec"),
                  "tcond": fv("tc", T, (-40, 25, 85, 105, 125), "condition"),
                  "us": fv("us", TIME, range(2, 502, 5))}
        bad = shared | {"mv": fv("mv", V, range(20, 120, 2)), "i": fv("i", I, range(150, 1950, 7)),
                        "iq": fv("i", I, range(20, 300, 3)), "tc": fv("tc", T, range(105, 150)),
                        "ps": fv("ps", TIME, range(30, 150)), "slack": fv("ps", TIME, range(-150, -4))}
        ok = shared | {"mv": fv("mv", V, range(200, 400, 5)), "i": fv("i", I, range(20, 90)),
                       "iq": fv("i", I, range(1, 5)), "tc": fv("tc", T, range(45, 85)),
                       "ps": fv("ps", TIME, range(3, 20)), "slack": fv("ps", TIME, range(5, 80))}
        return bad, ok

    def _s_dom(self):
        d = self.r_dom if self.rand() < 0.7 else self._choice(lx.POWER_DOMAINS)
        return f"\x01DOMAIN\x02{d}\x03"

    def _s_v(self):
        return self._choice(self.r_vtab[2 if self.slots.make is self.make_ok else 1])

    def _s_p2(self):
        return self.phrase(self.r_type)

    def _s_f(self):
        return self._choice(self.r_ftab[2 if self.slots.make is self.make_ok else 1])

    def typos(self, s: str) -> str:
        """Engineer typos: swap, drop or double one letter in a share ``typo``
        of the words of 4+ letters (entities and numbers are never touched)."""
        words = s.split(" ")
        rand, rate = self.rand, self.st.typo
        # Jump from typo to typo (geometric gaps) instead of a draw per word.
        j = int(math.log(1.0 - rand()) / math.log(1.0 - rate))
        while j < len(words):
            w = words[j]
            if len(w) >= 4 and w.isalpha():
                k = 1 + int(rand() * (len(w) - 2))
                r = rand()
                if r < 0.4:
                    w = w[:k - 1] + w[k] + w[k - 1] + w[k + 1:]   # swap two letters
                elif r < 0.7:
                    w = w[:k] + w[k + 1:]                         # drop one
                else:
                    w = w[:k] + w[k] + w[k:]                      # double one
                words[j] = w
            j += 1 + int(math.log(1.0 - rand()) / math.log(1.0 - rate))
        return " ".join(words)

    # -- one report -----------------------------------------------------------
    def report(self, idx: int) -> FailureReport:
        rng, rand, st, fab = self.rng, self.rand, self.st, self.fab
        self.used_heldout = False
        ftype = self.pick_type(rng)
        cause = self.pick_cause[ftype](rng)
        stage = self.pick_stage(rng)
        impact = self.pick_impact(rng)
        sev = severity_of(ftype, cause, stage, impact)
        act = action_of(sev, cause, stage, fab)

        # Other phenomena: secondary ones (present, caused by the primary) and
        # ruled-out ones (mentioned as absent); both favour related types.
        nsec, nneg = self.pick_nsec(rng), self.pick_nneg(rng)
        picked = []
        while len(picked) < nsec + nneg:
            t = self.pick_other[ftype](rng)
            if t not in picked:
                picked.append(t)
        secondary, ruled_out = picked[:nsec], picked[nsec:]

        # What stays the same across the report's sentences.
        ids = self.id_tabs
        vtab = self.v_tabs[_V_NOM[int(rand() * len(_V_NOM))]]
        ftab = self.f_tabs[_F_NOM[int(rand() * len(_F_NOM))]]
        self.r_vtab, self.r_ftab = vtab, ftab
        self.r_dom = lx.POWER_DOMAINS[int(rand() * len(lx.POWER_DOMAINS))]
        n = _UNITS[int(rand() * len(_UNITS))]
        vnom, fnom = vtab[0][int(rand() * len(vtab[0]))], ftab[0][int(rand() * len(ftab[0]))]
        tcond = self.tcond[int(rand() * len(self.tcond))]
        stages = lx.STAGES[stage][fab]
        self.base = self.slots.base = {
            "dev": ids["dev"][int(rand() * 2999)], "wafer": ids["wafer"][int(rand() * 25)],
            "die": ids["die"][int(rand() * 144)], "stage": stages[int(rand() * len(stages))],
            "vnom": vnom, "fnom": fnom, "sev": sev,
            "cond": (f"{vnom}/{tcond}" if rand() < 0.5 else f"{vnom}, {tcond}, {fnom}").replace(
                ":spec\x02", ":condition\x02"),   # the nominals, as the conditions of the test
            "n": n, "k": 2 + int(min(n // 5, 12) * rand()), "pct": 3 + int(30 * rand()),
        }

        say = self.say
        self.r_primary = ftype
        head = [say(lx.HEADER)]
        # A report that does not mention fallout is about a single unit.
        if impact != "single" or rand() < st.p_impact:
            head.append(say(lx.IMPACT[impact]))
        if fab == "D" and rand() < 0.5:
            head.insert(0, say(lx.SEVERITY_LINE))

        body = [self.mention(t, True) for t in [ftype] + secondary]
        rng.shuffle(body)   # the primary is not always reported first
        for t in ruled_out:
            body.insert(int(rand() * (len(body) + 1)), self.mention(t, False))
        # Which phenomenon is primary is stated once per secondary one, or once
        # for both, so the primary is not simply the most mentioned.
        if len(secondary) == 2 and rand() < 0.5:
            body.append(say(lx.ATTRIBUTE2, p=self.phrase(ftype), s=self.phrase(secondary[0]),
                            s2=self.phrase(secondary[1])))
        else:
            for t in secondary:
                body.append(say(lx.ATTRIBUTE, p=self.phrase(ftype), s=self.phrase(t)))
        if not secondary and rand() < 0.4:
            body.append(say(lx.CONCLUDE, p=self.phrase(ftype)))

        # The root cause: named, or given only by its evidence; often next to
        # a cause that was suspected and ruled out.
        names = lx.CAUSES[cause]
        name = names["names"][self.pick_name(rng)]
        ev = self._choice(names["evidence"])
        alt = self.pick_cause[ftype](rng) if rand() < CAUSE_DISTRACTOR_RATE else cause
        if alt == cause:
            tail = [say(lx.CAUSE, c=name, ev=ev)]
        else:
            alts = lx.CAUSES[alt]
            alt_name, alt_ev = alts["names"][self.pick_name(rng)], self._choice(alts["evidence"])
            if rand() < 0.5:
                tail = [say(lx.CAUSE_SWAP, alt=alt_name, alt_ev=alt_ev, c=name, ev=ev)]
            else:
                tail = [say(lx.CAUSE, c=name, ev=ev)]
                tail.insert(int(rand() * 2), say(lx.CAUSE_NEGATE, alt=alt_name, alt_ev=alt_ev))
        for _ in range(self.pick_nfill(rng)):
            tail.insert(int(rand() * (len(tail) + 1)), say(lx.FILLER))
        if rand() < st.p_action:
            phrases = lx.ADJUST_PHRASES.get(cause, lx.ACTION_PHRASES[act]) if act == "adjust" else lx.ACTION_PHRASES[act]
            tail.append(say(lx.ACTION, a=self._choice(phrases)))

        raw = st.separator.join(head + body + tail)
        if st.typo:
            raw = self.typos(raw)
        text, ents = _resolve(raw, lower=self.lower)

        clean = (ftype, sev, cause, act)
        labels, noisy = list(clean), []
        for j, task in enumerate(LABELS):
            if rand() < st.label_noise:
                labels[j] = self._confuse(task, clean, secondary)
                noisy.append(task)
        return FailureReport(
            id=f"{fab}-{self.split}-{self.seed}-{idx:06d}", fab=fab, text=text,
            failure_type=labels[0], severity=labels[1], root_cause=labels[2], action=labels[3],
            entities=ents, clean_failure_type=ftype, clean_severity=sev, clean_root_cause=cause,
            clean_action=act, split=self.split, stage=stage, impact=impact, phenomena=(ftype, *secondary),
            ruled_out=tuple(ruled_out), heldout=self.used_heldout, noisy=tuple(noisy))

    def _confuse(self, task: str, clean: tuple, secondary: list) -> str:
        """A label a disagreeing annotator gives: always different, always plausible."""
        ftype, sev, cause, act = clean
        rng = self.rng
        if task == "failure_type":
            # Annotators mostly disagree about which phenomenon is primary.
            return self._choice(secondary) if secondary else self.pick_other[ftype](rng)
        if task == "severity":
            return self._choice({"low": ("medium",), "medium": ("low", "high"), "high": ("medium",)}[sev])
        if task == "root_cause":
            return _Pick({c: w for c, w in CAUSE_GIVEN_TYPE[ftype].items() if c != cause})(rng)
        return self._choice(_ACTION_CONFUSION[act])


_UNITS = (25, 50, 77, 100, 231, 400, 800, 1200)              # units tested in a lot
_V_NOM = (0.75, 0.8, 0.85, 0.9, 1.0, 1.05, 1.1, 1.2, 1.8)   # nominal supplies, V
_F_NOM = (0.8, 1.2, 1.6, 2.0, 2.4, 2.8, 3.2)                # nominal clocks, GHz

# --- public functions ---------------------------------------------------------

def _check_int(name: str, value, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r})")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _check_choice(name: str, value, allowed: tuple) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, one of {allowed}, got {type(value).__name__} ({value!r})")
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    return value


@contextlib.contextmanager
def _no_gc():
    # Reports hold no reference cycles, but the cyclic collector still walks
    # every new container: pausing it makes bulk generation faster.
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _stream(fab: str, split: str, seed: int):
    w = _Writer(fab, split, seed)
    for idx in itertools.count():
        yield w.report(idx)


def generate_reports(n: int, fab: str = "A", seed: int = 0, split: str = "train") -> list[FailureReport]:
    """``n`` reports of ``fab``, deterministic for (fab, split, seed).

    ``split`` picks the random stream and whether held-out paraphrases may be
    used ("train" never uses them). ``generate_reports(m)`` is a prefix of
    ``generate_reports(n)`` for m < n. Raises TypeError/ValueError naming the
    argument on bad input. May contain near-duplicates: use ``make_splits``
    for deduplicated train/validation/test sets.
    """
    _check_int("n", n)
    _check_choice("fab", fab, ALL_FABS)
    _check_int("seed", seed)
    _check_choice("split", split, SPLITS)
    with _no_gc():
        return list(itertools.islice(_stream(fab, split, seed), n))


_NON_ALPHA = re.compile(r"[^a-z]+")


def near_duplicate_key(text: str) -> str:
    """Reports with the same key are near-duplicates: equal up to case,
    digits (IDs, values), punctuation and spacing."""
    return _NON_ALPHA.sub(" ", text.lower()).strip()


@dataclass(frozen=True)
class Splits:
    """Train / validation / test reports of one fab, no near-duplicates within or across."""
    train: list
    validation: list
    test: list

    def __iter__(self):
        return iter((self.train, self.validation, self.test))

    def as_dict(self) -> dict:
        return {"train": self.train, "validation": self.validation, "test": self.test}


def make_splits(fab: str = "A", n_train: int = 3000, n_val: int = 500, n_test: int = 1000,
                seed: int = 0) -> Splits:
    """Deduplicated splits of ``fab``: no two reports anywhere share a
    ``near_duplicate_key``.

    The test split is drawn first, so it does not depend on ``n_train`` or
    ``n_val``; a smaller ``n_train`` gives a prefix of a larger one. Only
    validation and test use held-out paraphrases.
    """
    _check_choice("fab", fab, ALL_FABS)
    for name, v in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test), ("seed", seed)):
        _check_int(name, v)
    with _no_gc():
        out = _dedup_splits(fab, seed, n_test, n_val, n_train)
    return Splits(out["train"], out["validation"], out["test"])


def _dedup_splits(fab, seed, n_test, n_val, n_train) -> dict:
    seen: set = set()
    out = {}
    for split, n in (("test", n_test), ("validation", n_val), ("train", n_train)):
        kept = []
        for r in _stream(fab, split, seed):
            if len(kept) >= n:
                break
            key = near_duplicate_key(r.text)
            if key not in seen:
                seen.add(key)
                kept.append(r)
        out[split] = kept
    return out


def to_records(reports) -> list[dict]:
    """Flat dicts (entities as a list of {start, end, label}) for
    ``pandas.DataFrame(...)`` or ``datasets.Dataset.from_list(...)``."""
    if isinstance(reports, FailureReport):
        raise TypeError("reports must be an iterable of FailureReport, got a single FailureReport")
    out = []
    for r in reports:
        if not isinstance(r, FailureReport):
            raise TypeError(f"reports must contain FailureReport objects, got {type(r).__name__}")
        d = asdict(r)
        d["entities"] = [dict(e) for e in d["entities"]]
        d["phenomena"], d["ruled_out"], d["noisy"] = list(r.phenomena), list(r.ruled_out), list(r.noisy)
        out.append(d)
    return out
