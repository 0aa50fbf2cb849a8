"""The synthetic fab: failure reports as engineers write them, with labels.

Real failure reports are proprietary, so the course generates them. Every
number the course shows rests on this generator; ``benchmarks/data_card.py``
measures what it produces (docs/data-card.md).

Generative story (one report)
-----------------------------
1. The fab (A-E, and F for the capstone: ``CAPSTONE_FAB``, not in ``FABS``;
   see ``bertlab/data/fabs.py``) draws the **failure type** from
   its own label mix.
2. The **root cause** is drawn from P(cause | failure type) (``CAUSE_GIVEN_TYPE``,
   reweighted by the fab's ``cause_tilt``). It is spread on purpose: latch-up
   shows up as current spikes, power anomalies, heat or droop.
3. The test **stage** (wafer sort, final test, burn-in, qualification, customer
   return) and the **impact** (single unit, a few, lot-wide) are drawn from the
   fab's mix.
4. **Severity** is a function of four things the report states: a score
   ``TYPE_SEVERITY[type] + CAUSE_SEVERITY[cause] + STAGE_SEVERITY[stage] +
   IMPACT_SEVERITY[impact]`` (``severity_score``), cut at ``SEVERITY_CUTS`` (<= 0 low, <= 2 medium,
   else high). A report that does not mention how many units fail is about
   one unit.
5. The **recommended action** is the fab's disposition policy
   (``action_of``): a test setup error is ignored (monitored if not low);
   high severity replaces damaged parts (``DAMAGE`` causes) and escalates the
   rest; medium severity adjusts ``TUNABLE`` causes, monitors ``AGING`` ones
   and debugs the others; low severity adjusts tunable causes and monitors the
   rest. Fab D (automotive) escalates where others debug, and replaces only
   customer returns; fab F (the capstone's) escalates every customer return
   that is not low.
6. The text: a header (device, wafer, die, stage, test conditions), maybe the
   fallout; the primary phenomenon, 0-2 **secondary** phenomena it caused
   and 0-2 **ruled-out** ones (drawn from related types, ``AFFINITY``), in
   random order, each with a measurement with probability ``MEASURE_RATE``
   (in spec when ruled out); a sentence saying which phenomenon is primary
   for each secondary one (or one for both); the root cause, by name and/or
   by evidence, and with probability ``CAUSE_DISTRACTOR_RATE`` a suspected
   cause that was ruled out; fillers; the next step (``p_action`` of the fab).
   Phrases and frames come from the fab's own jargon with probability
   ``own``, else from the shared core (``bertlab/data/lexicon.py``); fab E
   writes lower case with typos.

So the labels depend on each other as physics and policy do (type -> cause ->
severity -> action), and each one is recoverable from the text, but not from
single words: every report names several phenomena and often two causes, and
only negation ("no sign of X", "X ruled out"), attribution ("Y is secondary
to X", "X -> Y") and correction ("suspected X, but FA found ...") say which
one counts.

Annotator noise
---------------
With probability ``LABEL_NOISE_RATE`` (5%; a fab's ``label_noise``, 8% in
the capstone's fab F) per report and task, the label is
replaced by a plausible wrong one: a secondary phenomenon's type (else a
related type), an adjacent severity, another cause of the same type, a
neighbouring action. ``clean_*`` fields keep the labels the text was written
from; ``noisy`` names the tasks that were flipped. The accuracy ceiling on
noisy labels is therefore about 95%.

Held out
--------
Validation and test reports draw each phrase and frame from held-out
paraphrases with probability ``HELDOUT_RATE``; ``generate_reports(...,
split="train")`` never uses them. ``make_splits`` removes near-duplicates
(equal up to case, digits, punctuation: ``near_duplicate_key``) within and
across splits. ``domain_corpus`` uses its own sentence frames and never
contains a report.
"""
from .corpus import domain_corpus
from .fabs import FAB_STYLES
from .reports import (
    ACTIONS,
    AFFINITY,
    AGING,
    ALL_FABS,
    CAPSTONE_FAB,
    CAUSE_DISTRACTOR_RATE,
    CAUSE_GIVEN_TYPE,
    CAUSE_SEVERITY,
    DAMAGE,
    ENTITY_LABELS,
    ENTITY_ROLES,
    FABS,
    FAILURE_TYPES,
    HELDOUT_RATE,
    IMPACT_SEVERITY,
    LABEL_NOISE_RATE,
    LABELS,
    MEASURE_RATE,
    ROOT_CAUSES,
    SEVERITIES,
    SEVERITY_CUTS,
    SPLITS,
    STAGE_SEVERITY,
    STAGES,
    TUNABLE,
    TYPE_SEVERITY,
    Entity,
    FailureReport,
    Splits,
    action_of,
    generate_reports,
    make_splits,
    near_duplicate_key,
    severity_of,
    severity_score,
    to_records,
)

__all__ = [
    "FABS", "CAPSTONE_FAB", "ALL_FABS", "FAILURE_TYPES", "SEVERITIES", "ROOT_CAUSES", "ACTIONS", "ENTITY_LABELS",
    "ENTITY_ROLES", "LABELS", "STAGES",
    "SPLITS", "LABEL_NOISE_RATE", "HELDOUT_RATE", "MEASURE_RATE", "CAUSE_DISTRACTOR_RATE",
    "CAUSE_GIVEN_TYPE", "TYPE_SEVERITY", "CAUSE_SEVERITY", "STAGE_SEVERITY", "IMPACT_SEVERITY",
    "SEVERITY_CUTS", "DAMAGE", "TUNABLE", "AGING", "AFFINITY", "FAB_STYLES",
    "FailureReport", "Entity", "Splits", "generate_reports", "make_splits", "domain_corpus", "to_records",
    "near_duplicate_key", "severity_of", "severity_score", "action_of",
]
