"""The fabs: each one's label mix, writing style and report complexity.

A-E are the course's fabs; F is the capstone's (notebook 14), which no earlier notebook shows.

Pure data, read by ``reports.py``; the generative story is in the package
docstring (``bertlab/data/__init__.py``).
"""
from dataclasses import dataclass


@dataclass(frozen=True)
class FabStyle:
    """How one fab writes reports and what fails there.

    Weights are relative (they need not sum to 1). ``own`` is the chance that
    a phrase comes from the fab's own jargon rather than the shared core.
    """
    name: str
    description: str
    type_mix: dict          # failure type -> weight
    cause_tilt: dict        # root cause -> multiplier on P(cause | type)
    stage_mix: dict         # stage -> weight
    impact_mix: dict        # single / few / lot -> weight
    n_secondary: tuple      # weights for 0, 1, 2 secondary phenomena
    n_ruled_out: tuple      # weights for 0, 1, 2 ruled-out phenomena
    own: float              # P(fab jargon) for phenomena and frames
    typo: float             # P(a word of 4+ letters gets a typo)
    p_action: float         # P(the report states the next step)
    p_cause_name: tuple     # weights for the formal name, abbreviation, alternative
    p_impact: float         # P(the report states how many units fail)
    n_filler: tuple         # weights for 0, 1, 2 filler sentences
    formats: dict           # value kind -> list of format strings
    ids: dict               # device / wafer / die -> format string
    label_noise: float = 0.05   # P(an annotator's label differs from the clean one), per task and report
    separator: str = " "        # between the report's sentences


_TYPES = ("voltage_degradation", "current_spike", "frequency_instability", "power_anomaly",
          "temperature_issue", "timing_violation", "signal_integrity", "manufacturing_defect")


def _mix(*weights):
    return dict(zip(_TYPES, weights))


FAB_STYLES = {
    "A": FabStyle(
        name="A", description="advanced-node logic fab; terse engineer notes with standard abbreviations "
                              "(Vdd droop, Idd spike, Fmax), 85C-style units",
        type_mix=_mix(16, 10, 14, 10, 8, 20, 12, 10),
        cause_tilt={"nbti": 1.5, "hot_carrier_injection": 1.3, "electromigration": 1.3},
        stage_mix={"wafer_sort": 3, "final_test": 4, "burn_in": 2, "qualification": 1, "customer_return": 1},
        impact_mix={"single": 4, "few": 3, "lot": 1},
        n_secondary=(5, 4, 1), n_ruled_out=(4, 5, 1), own=0.55, typo=0.01, p_action=0.5,
        p_cause_name=(3, 6, 1), p_impact=0.6, n_filler=(8, 2, 0),
        formats={"v": ["{:.2f}V"], "mv": ["{:d}mV"], "i": ["{:d}mA"], "f": ["{:.1f}GHz"], "tc": ["{:d}C", "{:d}°C"],
                 "ps": ["{:d}ps"], "us": ["{:d}us"]},
        ids={"dev": "DUT_{:04d}", "wafer": "W{:02d}", "die": "({},{})"},
    ),
    "B": FabStyle(
        name="B", description="power-management fab; full sentences and spelled-out terms "
                              "(supply voltage degradation), °C with a space",
        type_mix=_mix(16, 16, 6, 18, 16, 6, 8, 14),
        cause_tilt={"latch_up": 1.5, "thermal_interface": 1.5, "ir_drop": 1.3},
        stage_mix={"wafer_sort": 2, "final_test": 3, "burn_in": 3, "qualification": 2, "customer_return": 2},
        impact_mix={"single": 3, "few": 3, "lot": 2},
        n_secondary=(5, 4, 1), n_ruled_out=(4, 5, 1), own=0.6, typo=0.0, p_action=0.6,
        p_cause_name=(8, 1, 1), p_impact=0.4, n_filler=(8, 2, 0),
        formats={"v": ["{:.2f} V"], "mv": ["{:d} mV"], "i": ["{:d} mA"], "f": ["{:.2f} GHz"], "tc": ["{:d} °C"],
                 "ps": ["{:d} ps"], "us": ["{:d} µs"]},
        ids={"dev": "DUT-{:04d}", "wafer": "W-{:02d}", "die": "({}, {})"},
    ),
    "C": FabStyle(
        name="C", description="mature-node fab; telegraphic, upper-case shorthand and arrows "
                              "(IDD spk, PLL LOL, P -> S), mV and MHz",
        type_mix=_mix(10, 12, 10, 12, 8, 8, 18, 22),
        cause_tilt={"particle_contamination": 1.6, "contact_resistance": 1.5, "crosstalk": 1.3},
        stage_mix={"wafer_sort": 4, "final_test": 4, "burn_in": 1, "qualification": 1, "customer_return": 1},
        impact_mix={"single": 3, "few": 3, "lot": 3},
        n_secondary=(5, 4, 1), n_ruled_out=(4, 5, 1), own=0.65, typo=0.02, p_action=0.4,
        p_cause_name=(1, 8, 1), p_impact=0.4, n_filler=(8, 2, 0),
        formats={"v": ["{mv:d}mV"], "mv": ["{:d}mV"], "i": ["{:d}mA"], "f": ["{mhz:d}MHz"], "tc": ["{:d}C"],
                 "ps": ["{:d}ps"], "us": ["{:d}us"]},
        ids={"dev": "D{:04d}", "wafer": "W#{:02d}", "die": "X{}Y{}"},
    ),
    "D": FabStyle(
        name="D", description="automotive qualification lab; formal passive voice, long reports, "
                              "explicit severity lines",
        type_mix=_mix(18, 10, 10, 10, 20, 12, 8, 12),
        cause_tilt={"nbti": 1.3, "thermal_interface": 1.4, "gate_oxide_breakdown": 1.4},
        stage_mix={"wafer_sort": 1, "final_test": 2, "burn_in": 3, "qualification": 4, "customer_return": 2},
        impact_mix={"single": 4, "few": 3, "lot": 1},
        n_secondary=(5, 4, 1), n_ruled_out=(5, 4, 1), own=0.6, typo=0.0, p_action=0.6,
        p_cause_name=(9, 1, 1), p_impact=0.4, n_filler=(8, 2, 0),
        formats={"v": ["{:.3f} V"], "mv": ["{:d} mV"], "i": ["{a:.3f} A"], "f": ["{:.2f} GHz"], "tc": ["{:d}°C"],
                 "ps": ["{:d} ps"], "us": ["{:d} µs"]},
        ids={"dev": "DUT_{:04d}", "wafer": "W{:02d}", "die": "{}/{}"},
    ),
    "E": FabStyle(
        name="E", description="assembly and test house; non-native English, lower case, typos, "
                              "short reports",
        type_mix=_mix(10, 18, 8, 10, 12, 6, 16, 20),
        cause_tilt={"bond_wire_failure": 2.0, "esd_damage": 1.6, "test_setup_error": 1.5},
        stage_mix={"wafer_sort": 1, "final_test": 5, "burn_in": 2, "qualification": 1, "customer_return": 2},
        impact_mix={"single": 3, "few": 3, "lot": 2},
        n_secondary=(5, 4, 1), n_ruled_out=(5, 4, 1), own=0.6, typo=0.05, p_action=0.3,
        p_cause_name=(4, 2, 4), p_impact=0.4, n_filler=(8, 2, 0),
        formats={"v": ["{:.2f}v", "{:.2f}V"], "mv": ["{:d}mv"], "i": ["{:d}ma", "{:d}mA"], "f": ["{:.1f}ghz"],
                 "tc": ["{:d} deg", "{:d}c"], "ps": ["{:d}ps", "{:d} ps"], "us": ["{:d}us"]},
        ids={"dev": "dut{:04d}", "wafer": "w{:02d}", "die": "({},{})"},
    ),
    # The capstone's fab: a foundry's customer-quality desk. Tickets in the shared core wording
    # (none of A-E's jargon), fields separated by " | ", mV and MHz; many customer returns and
    # lot-wide fallout (more escalations and replacements), few tickets state the next step,
    # and a noisier annotator than A-E.
    "F": FabStyle(
        name="F", description="foundry customer-quality desk; tickets in plain shared wording, fields separated "
                              "by ' | ', mV and MHz, few state the next step, noisier labels",
        type_mix=_mix(12, 14, 8, 16, 10, 8, 10, 22),
        cause_tilt={"particle_contamination": 1.4, "esd_damage": 1.4, "process_variation": 1.3},
        stage_mix={"wafer_sort": 1, "final_test": 2, "burn_in": 1, "qualification": 2, "customer_return": 4},
        impact_mix={"single": 3, "few": 2, "lot": 3},
        n_secondary=(5, 4, 1), n_ruled_out=(3, 5, 2), own=0.0, typo=0.01, p_action=0.2,
        p_cause_name=(5, 3, 2), p_impact=0.5, n_filler=(8, 2, 0),
        formats={"v": ["{mv:d} mV"], "mv": ["{:d} mV"], "i": ["{:d} mA"], "f": ["{mhz:d} MHz"], "tc": ["{:d} degC"],
                 "ps": ["{:d} ps"], "us": ["{:d} us"]},
        ids={"dev": "CQ-{:04d}", "wafer": "WF{:02d}", "die": "[{},{}]"},
        label_noise=0.08, separator=" | ",
    ),
}
