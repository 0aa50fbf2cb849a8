"""The unlabeled domain corpus: datasheets, test procedures, lab notebooks,
mechanism notes and glossary entries about the same devices.

Documents are lists of sentences in reading order, so consecutive sentences
are IsNext pairs for NSP. The corpus has its own sentence frames: it shares
vocabulary with the reports (including the held-out paraphrases, as real
unlabeled text would) but never a report or a report sentence.
"""
from __future__ import annotations

from random import Random

from . import lexicon as lx
from .reports import CAUSE_GIVEN_TYPE, FAILURE_TYPES, _check_int

FAMILIES = ("BX-200", "BX-210", "NV-7", "NV-9", "KR-35", "QL-12", "TS-880", "MX-4")

# One or two sentences per root cause: what it is and how it is avoided.
MECHANISMS = {
    "electromigration": ("{n} is the drift of metal atoms under high current density, which leaves voids and hillocks.",
                         "Wider power straps and redundant vias reduce the current density."),
    "nbti": ("{n} shifts the threshold voltage of PMOS devices under negative gate bias at high temperature.",
             "Part of the shift recovers when the bias is removed, which distinguishes it from permanent damage."),
    "hot_carrier_injection": ("{n} traps energetic carriers in the gate oxide near the drain and degrades drive current.",
                              "It is worst at low temperature and high drain voltage."),
    "gate_oxide_breakdown": ("{n} is the wear-out of the gate dielectric under field stress until a conductive path forms.",
                             "Soft breakdown raises gate leakage before a hard short appears."),
    "contact_resistance": ("{n} comes from poor silicide formation or contamination at the contact interface.",
                           "Kelvin structures in the scribe line monitor it at wafer level."),
    "process_variation": ("{n} spreads device parameters across the wafer and from lot to lot.",
                          "Ring oscillators and parametric monitors place each die on the process corner map."),
    "esd_damage": ("{n} is caused by a discharge that exceeds the protection clamp rating during handling.",
                   "Grounded workstations and wrist straps prevent most events."),
    "latch_up": ("{n} turns on the parasitic thyristor between the wells and holds a low-impedance path until power is removed.",
                 "Guard rings and well taps close to the IO cells suppress it."),
    "crosstalk": ("{n} couples switching activity of an aggressor net into a neighbouring victim net.",
                  "Shielding and spacing of long parallel routes reduce the coupling."),
    "ir_drop": ("{n} is the voltage lost across the resistance of the power grid when current flows.",
                "Dynamic analysis with realistic switching activity finds the weak regions of the grid."),
    "pll_jitter": ("{n} moves the clock edges in time and can cost the loop its lock.",
                   "The loop filter trades jitter against lock time."),
    "thermal_interface": ("{n} raises the thermal resistance between die and heat sink.",
                          "X-ray and acoustic microscopy show voids in the interface material."),
    "bond_wire_failure": ("{n} opens or weakens the connection between pad and package lead.",
                          "Pull and shear tests on sample units monitor the bonding process."),
    "particle_contamination": ("{n} leaves foreign material in the film stack that shorts or opens lines.",
                               "Inline inspection maps particles so that affected dies can be traced."),
    "test_setup_error": ("A {n} makes a good unit fail because of the socket, probe card or tester program.",
                         "Correlation units and periodic probe card cleaning catch most of these."),
}

_DATASHEET = [
    "The {fam} operates from a {dom} supply of {v} nominal with a tolerance of {tol}%.",
    "The absolute maximum rating for {dom} is {vmax}.",
    "The on-chip PLL covers {flo} to {fhi} with a lock time below {us}.",
    "Quiescent current on {dom} is typically {iq} at {tlo}.",
    "The maximum junction temperature is {tmax}.",
    "Thermal resistance junction to ambient is {theta} °C/W on the reference board.",
    "All IO pins withstand {esd} V HBM.",
    "Setup and hold times on the DDR interface are specified at {ps} each.",
]
_PROCEDURE = [
    "Step {k}: Mount the {fam} in the socket and verify continuity on all supply pins.",
    "Step {k}: Ramp {dom} to {v} and wait {us} for the rails to settle.",
    "Step {k}: Measure the quiescent current on {dom} and compare it with the {iqlim} limit.",
    "Step {k}: Sweep the core clock from {flo} to {fhi} and record the highest passing frequency.",
    "Step {k}: Repeat the sweep at {thi} after the chamber has stabilized.",
    "Step {k}: Capture the eye on the serial link and record height and jitter.",
    "Step {k}: Log all readings and power down {dom} before removing the unit.",
]
_NOTEBOOK = [
    ["Started {stress} on lot L{lot} with {n} units of the {fam}.", "Chamber set to {thi}, {dom} at {v}."],
    ["After {hours} h, {k} units drifted by {dv} on {dom}.", "The remaining units are stable within {tol}%."],
    ["A bake at {thi} recovered part of the drift.", "The drift did not recover after the bake."],
    ["Working hypothesis: {cause}.", "This looks like {cause}, to be confirmed by FA."],
    ["Next: cross-section of the worst unit.", "Next: repeat on a second tester to exclude the setup.",
     "Next: compare with the golden unit at {tlo}."],
]


class _Corpus:
    """Draws documents from one random stream."""

    def __init__(self, seed: int):
        self.rng = Random(f"bertlab-corpus|{seed}")

    def choice(self, seq):
        return seq[int(self.rng.random() * len(seq))]

    def values(self) -> dict:
        r, c = self.rng.random, self.choice
        v = c((0.75, 0.8, 0.9, 1.0, 1.1, 1.2, 1.8, 3.3))
        f = c((0.8, 1.2, 1.6, 2.0, 2.4, 3.2))
        return {
            "fam": c(FAMILIES), "dom": c(lx.POWER_DOMAINS), "v": f"{v:.2f} V", "vmax": f"{v * 1.1:.2f} V",
            "tol": c((3, 5, 10)), "flo": f"{f / 4:.1f} GHz", "fhi": f"{f:.1f} GHz", "us": f"{int(5 + 95 * r())} µs",
            "iq": f"{int(1 + 9 * r())} mA", "iqlim": f"{c((5, 8, 10, 15))} mA", "tlo": c(("25 °C", "25C", "-40 °C")),
            "thi": c(("125 °C", "125C", "105 °C", "150C")), "tmax": c(("105 °C", "125 °C", "150 °C")),
            "theta": c((18, 22, 27, 35)), "esd": c((1000, 2000, 4000)), "ps": f"{int(20 + 80 * r())} ps",
            "stress": c(("HTOL", "burn-in", "HAST", "temperature cycling")), "lot": int(1000 + 8999 * r()),
            "n": c((22, 45, 77, 231)), "hours": c((48, 168, 500, 1000)), "k": int(1 + 5 * r()),
            "dv": f"{int(5 + 40 * r())} mV",
        }

    def datasheet(self) -> list[str]:
        vals = self.values()
        k = 3 + int(self.rng.random() * 4)
        # Datasheet sections keep their order; a document is a contiguous run.
        start = int(self.rng.random() * (len(_DATASHEET) - k + 1))
        return [s.format(**vals) for s in _DATASHEET[start:start + k]]

    def procedure(self) -> list[str]:
        vals = self.values()
        steps = [s for s in _PROCEDURE if self.rng.random() < 0.8] or _PROCEDURE[:2]
        return [s.format(**(vals | {"k": i + 1})) for i, s in enumerate(steps)]

    def notebook(self) -> list[str]:
        vals = self.values()
        cause = self.choice(tuple(lx.CAUSES))
        vals["cause"] = self.choice(lx.CAUSES[cause]["names"])
        return [self.choice(options).format(**vals) for options in _NOTEBOOK]

    def mechanism(self) -> list[str]:
        cause = self.choice(tuple(lx.CAUSES))
        names = lx.CAUSES[cause]["names"]
        what, avoid = MECHANISMS[cause]
        shows = [t for t, cs in CAUSE_GIVEN_TYPE.items() if cause in cs]
        t1, t2 = self.choice(shows), self.choice(shows)
        what = what.format(n=names[0])
        out = [what[0].upper() + what[1:],
               f"In failure reports it is often abbreviated as {names[1]} or called {names[2]}.",
               f"Typical symptoms are {self.phrase(t1)} and {self.phrase(t2)}.",
               f"Failure analysis usually finds {self.choice(lx.CAUSES[cause]['evidence'])}.",
               avoid]
        return out

    def phrase(self, ftype: str) -> str:
        pools = lx.PHENOMENA[ftype]
        return self.choice(pools[self.choice(tuple(pools))])

    def glossary(self) -> list[str]:
        ftype = self.choice(FAILURE_TYPES)
        pools = lx.PHENOMENA[ftype]
        words = [p for pool in pools.values() for p in pool]
        self.rng.shuffle(words)
        head, *syn = words[:5]
        name = ftype.replace("_", " ")
        return [f"Glossary: {name}.",
                f"Engineers also write {syn[0]}, {syn[1]} or {syn[2]} for it.",
                f"Some notes call it {head}, and some {syn[3]}.",
                "It is one of the eight failure types used to classify reports."]

    def document(self) -> list[str]:
        kind = self.choice((self.datasheet, self.procedure, self.notebook, self.notebook,
                            self.mechanism, self.glossary))
        return kind()


def domain_corpus(n_docs: int = 2000, seed: int = 0) -> list[list[str]]:
    """``n_docs`` unlabeled documents, each a list of sentences in order.

    Deterministic for ``seed``. Contains no failure report (nor any sentence
    of one): use it for continued MLM pre-training, and consecutive sentences
    of a document as IsNext pairs for NSP.
    """
    _check_int("n_docs", n_docs)
    _check_int("seed", seed)
    c = _Corpus(seed)
    return [c.document() for _ in range(n_docs)]
