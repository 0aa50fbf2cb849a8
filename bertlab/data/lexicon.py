"""The words of the synthetic fab: phrase pools and sentence frames.

Pure data, no logic. Every pool is a dict with the keys

- ``"core"``: wording every fab uses,
- ``"A"`` .. ``"E"``: that fab's own jargon (a model trained on one fab has
  never seen the others'); the capstone's fab F has none (core wording only)
  except its names of the test stages,
- ``"heldout"``: paraphrases that only the validation and test splits use.

Slots in frames (``{p}``, ``{dom}``, ...) are filled by ``reports.py``.
Held-out phrases must not be substrings of any other phrase (a test checks
that the training split never contains one).
"""

# --- Failure types: noun phrases naming the phenomenon ----------------------
# Words are shared across classes on purpose ("drift", "excursion", "current",
# "loss", "margin", "glitch"), so no single token gives the class away.
PHENOMENA = {
    "voltage_degradation": {
        "core": ["voltage degradation", "supply voltage drop", "low supply voltage", "voltage droop"],
        "A": ["Vdd droop", "rail sag", "Vmin creep"],
        "B": ["supply voltage degradation", "degraded supply level", "gradual loss of supply voltage"],
        "C": ["UV event", "VDD dip", "rail dip"],
        "D": ["degradation of the supply voltage", "insufficient supply voltage", "supply voltage below specification"],
        "E": ["voltage go down", "volt drop", "vdd too low"],
        "heldout": ["brown-out on the rail", "undervoltage excursion", "supply collapse", "sagging core voltage"],
    },
    "current_spike": {
        "core": ["current spike", "current surge", "sudden current peak", "current transient"],
        "A": ["Idd spike", "Icc kick", "current glitch"],
        "B": ["abrupt increase in supply current", "transient overcurrent", "surge of supply current"],
        "C": ["IDD spk", "OC trip", "I-spike"],
        "D": ["excessive transient current", "overcurrent condition", "current excursion above limit"],
        "E": ["current jump", "big current peak", "ampere spike"],
        "heldout": ["surge in draw", "current burst", "momentary overcurrent", "sharp rise in supply current"],
    },
    "frequency_instability": {
        "core": ["frequency instability", "clock frequency drift", "unstable clock", "PLL lock loss"],
        "A": ["Fmax drop", "clock wander", "PLL unlock"],
        "B": ["instability of the operating frequency", "oscillator frequency drift", "intermittent loss of clock lock"],
        "C": ["FREQ drift", "PLL LOL", "clk unstable"],
        "D": ["deviation of the clock frequency", "failure to maintain frequency lock", "frequency outside the specified range"],
        "E": ["clock not stable", "frequency move around", "pll lose lock"],
        "heldout": ["oscillator walking off", "clock hopping", "frequency wobble", "lock drops out"],
    },
    "power_anomaly": {
        "core": ["power anomaly", "abnormal power consumption", "elevated leakage", "high standby power"],
        "A": ["IDDQ fail", "leaky part", "power over budget"],
        "B": ["unexpected increase in power draw", "excess static power", "abnormal quiescent current"],
        "C": ["IDDQ hi", "PWR hi", "lkg fail"],
        "D": ["power dissipation above specification", "anomalous power consumption", "excessive quiescent current"],
        "E": ["power too much", "leak current big", "eat too much power"],
        "heldout": ["runaway power draw", "quiescent draw out of family", "standby burn", "power budget overshoot"],
    },
    "temperature_issue": {
        "core": ["temperature issue", "overheating", "thermal excursion", "hot spot"],
        "A": ["Tj overshoot", "thermal runaway", "die running hot"],
        "B": ["excessive junction temperature", "localized heating", "thermal excursion beyond limit"],
        "C": ["OT event", "TJ hi", "hotspot"],
        "D": ["junction temperature above the rated maximum", "insufficient thermal dissipation", "overtemperature condition"],
        "E": ["too hot", "temperature go high", "chip very hot"],
        "heldout": ["heat buildup", "thermal creep upward", "scorching die", "temperature overshoot"],
    },
    "timing_violation": {
        "core": ["timing violation", "setup time violation", "negative slack", "hold violation"],
        "A": ["setup fail", "critical path miss", "speedpath fail"],
        "B": ["failure to meet timing", "violation of setup timing", "insufficient timing margin"],
        "C": ["TMG fail", "neg slack", "hold viol"],
        "D": ["timing requirements not met", "setup and hold violation", "timing margin below requirement"],
        "E": ["timing not meet", "path too slow", "timing broken"],
        "heldout": ["late-arriving data", "path misses its window", "slack gone negative", "capture edge missed"],
    },
    "signal_integrity": {
        "core": ["signal integrity issue", "crosstalk noise", "ringing on the line", "eye closure"],
        "A": ["SI hit", "eye collapse", "reflections on the bus"],
        "B": ["degraded signal quality", "excessive ringing", "distorted waveform"],
        # "glitch" means a current glitch in fab A but a signal glitch in fab C.
        "C": ["SI fail", "eye closed", "signal glitch"],
        "D": ["degradation of signal integrity", "insufficient eye margin", "excessive overshoot on the interface"],
        "E": ["signal not clean", "noisy signal", "waveform ugly"],
        "heldout": ["mangled edges", "smeared eye diagram", "bouncing data lines", "corrupted edges on the link"],
    },
    "manufacturing_defect": {
        "core": ["manufacturing defect", "process defect", "physical defect", "fab defect"],
        "A": ["killer defect", "yield hit", "visual reject"],
        "B": ["defect introduced during fabrication", "structural defect", "processing anomaly"],
        "C": ["MFG def", "VI reject", "bin 7 defect"],
        "D": ["nonconformity from the manufacturing process", "fabrication defect", "deviation in the manufacturing process"],
        "E": ["bad from factory", "production defect", "defect from making"],
        "heldout": ["flaw baked in at fab", "built-in flaw", "as-fabricated anomaly", "defect from the line"],
    },
}

# Measurement snippets per failure type, in each fab's notation. The same
# snippets serve an observed phenomenon (out-of-spec values) and a ruled-out
# one (in-spec values), so their words do not tell the two apart. Value slots:
# {v} {vnom} {mv} voltage, {i} {ilim} {iq} {iqlim} current, {f} {fnom}
# frequency, {tc} {tcmax} temperature, {ps} {us} {slack} time, {dom} {die} {wafer}.
MEASURES = {
    "voltage_degradation": {
        "core": ["{dom} at {v} vs {vnom} nominal", "min {v} against {vnom} spec"],
        "A": ["Vmin {v} on {dom}", "{dom} {v}/{vnom}"], "B": ["a supply level of {v} against {vnom} nominal"],
        "C": ["{dom}={v} NOM {vnom}"], "D": ["a minimum supply of {v} against {vnom} nominal"],
        "E": ["{dom} only {v}, should be {vnom}"],
    },
    "current_spike": {
        "core": ["peak {i} lasting {us}", "{i} against {ilim} limit"],
        "A": ["Ipk {i}, {us} wide"], "B": ["a peak current of {i} for {us}"], "C": ["IPK={i} {us}"],
        "D": ["a peak of {i} against a limit of {ilim}"], "E": ["current up to {i} for {us}"],
    },
    "frequency_instability": {
        "core": ["{f} against {fnom} target", "clock at {f} after {us}"],
        "A": ["Fclk {f} vs {fnom}"], "B": ["an operating frequency of {f} versus {fnom}"],
        "C": ["F={f} TGT {fnom}"], "D": ["a measured frequency of {f} against a target of {fnom}"],
        "E": ["clock {f}, must be {fnom}"],
    },
    "power_anomaly": {
        "core": ["{iq} quiescent vs {iqlim} limit", "standby {iq} against {iqlim} max"],
        "A": ["IDDQ {iq} on {dom}"], "B": ["a quiescent current of {iq} against a {iqlim} limit"],
        "C": ["IDDQ={iq} LIM {iqlim}"], "D": ["a standby current of {iq} against a limit of {iqlim}"],
        "E": ["idle current {iq}, limit {iqlim}"],
    },
    "temperature_issue": {
        "core": ["Tj {tc} vs {tcmax} max", "{tc} at the hottest sensor"],
        "A": ["Tj {tc}"], "B": ["a junction temperature of {tc}"], "C": ["TJ={tc}"],
        "D": ["a junction temperature of {tc}, rated {tcmax}"], "E": ["temp {tc} on sensor"],
    },
    "timing_violation": {
        "core": ["slack {slack} at {f}", "setup margin {slack} at {f}"],
        "A": ["WNS {slack} @ {f}"], "B": ["a worst slack of {slack} at {f}"], "C": ["WNS={slack} {f}"],
        "D": ["a worst-case slack of {slack} at {f}"], "E": ["slack {slack} when {f}"],
    },
    "signal_integrity": {
        "core": ["eye height {mv}", "jitter {ps} pk-pk"],
        "A": ["eye {mv} tall, jitter {ps}"], "B": ["an eye opening of {mv}"], "C": ["EYE={mv} JIT={ps}"],
        "D": ["an eye height of {mv} and jitter of {ps}"], "E": ["eye {mv}, jitter {ps}"],
    },
    "manufacturing_defect": {
        "core": ["inspection of die {die}", "inline scan of {wafer}"],
        "A": ["KLA scan of {wafer}"], "B": ["an optical inspection of die {die}"], "C": ["AOI {wafer} {die}"],
        "D": ["a visual inspection of die {die}"], "E": ["microscope check die {die}"],
    },
}

# --- Root causes: names (formal, abbreviation, alternative) and evidence ----
# Evidence is indirect: a report may give only the evidence, so the model has
# to learn which observation points to which mechanism.
CAUSES = {
    "electromigration": {
        "names": ["electromigration", "EM", "metal migration"],
        "evidence": ["voiding in the M3 via on the FIB cross-section", "power strap resistance rising over stress time",
                     "hillocks next to the metal line", "open via after high current stress"],
    },
    "nbti": {
        "names": ["negative bias temperature instability", "NBTI", "BTI aging"],
        "evidence": ["PMOS Vth shift that partly recovers after bake", "degradation that relaxes when bias is removed",
                     "threshold drift growing with burn-in hours"],
    },
    "hot_carrier_injection": {
        "names": ["hot-carrier injection", "HCI", "hot carrier damage"],
        "evidence": ["Idsat loss that is worst at low temperature", "NMOS drive loss localized near the drain",
                     "degradation tracking substrate current"],
    },
    "gate_oxide_breakdown": {
        "names": ["gate oxide breakdown", "TDDB", "oxide rupture"],
        "evidence": ["gate leakage up by three decades", "breakdown spot under the gate on OBIRCH",
                     "soft breakdown signature in gate current"],
    },
    "contact_resistance": {
        "names": ["high contact resistance", "Rc issue", "resistive contact"],
        "evidence": ["Kelvin structure reads contact resistance out of family", "silicide missing on the contact",
                     "resistance drops after re-seating the contact"],
    },
    "process_variation": {
        "names": ["process variation", "corner skew", "slow corner silicon"],
        "evidence": ["ring oscillator data puts the die at the slow corner", "parametric spread toward the wafer edge",
                     "Vth skew across the whole lot"],
    },
    "esd_damage": {
        "names": ["ESD damage", "electrostatic discharge", "ESD zap"],
        "evidence": ["melted filament at the IO clamp", "pin-to-pin leakage after handling",
                     "damage on the ESD diode"],
    },
    "latch_up": {
        "names": ["latch-up", "latchup", "parasitic SCR trigger"],
        "evidence": ["supply current stays high until a power cycle", "burn mark near the well tap",
                     "current clamps only after removing power"],
    },
    "crosstalk": {
        "names": ["crosstalk", "coupling noise", "aggressor coupling"],
        "evidence": ["fail follows switching of the neighbouring bus", "noise vanishes when the aggressor net is quiet",
                     "extraction shows a long parallel run to the victim net"],
    },
    "ir_drop": {
        "names": ["IR drop", "power grid drop", "resistive supply drop"],
        "evidence": ["voltage map shows a dip in the middle of the grid", "dynamic IR analysis flags the block",
                     "drop scales with switching activity"],
    },
    "pll_jitter": {
        "names": ["PLL jitter", "PLL loop instability", "reference clock jitter"],
        "evidence": ["phase noise spur near the loop bandwidth", "jitter grows when the loop filter is trimmed",
                     "reference clock jitter above spec"],
    },
    "thermal_interface": {
        "names": ["thermal interface failure", "TIM degradation", "heat sink contact loss"],
        "evidence": ["voids in the thermal interface material on X-ray", "thermal resistance double the golden unit",
                     "heat sink not seated"],
    },
    "bond_wire_failure": {
        "names": ["bond wire failure", "wire bond lift", "broken bond"],
        "evidence": ["lifted ball bond on pad 12 under SEM", "intermittent open that moves with package flex",
                     "bond pull test below limit"],
    },
    "particle_contamination": {
        "names": ["particle contamination", "particle defect", "foreign material"],
        "evidence": ["particle in the metal stack at the failing site", "inline inspection flagged a particle at that die",
                     "defect map clusters near the wafer edge"],
    },
    "test_setup_error": {
        "names": ["test setup error", "tester issue", "probe card problem"],
        "evidence": ["unit passes on a second tester", "fail disappears after cleaning the probe card",
                     "socket contact was worn", "retest passes at the same conditions"],
    },
}

ACTION_PHRASES = {
    "debug": ["send to FA for debug", "debug on the bench", "open a debug ticket"],
    "replace": ["replace the unit", "swap the part", "ship a replacement"],
    "adjust": ["adjust the test limits", "update the bin limits"],
    "monitor": ["keep monitoring the lot", "put the lot on watch", "track it in the next burn-in"],
    "escalate": ["escalate to the product team", "raise a quality alert", "hold the lot and escalate"],
    "ignore": ["close as no trouble found", "take no action", "close the ticket"],
}

# What "adjust" means depends on what is tunable about the cause.
ADJUST_PHRASES = {
    "pll_jitter": ["tune the PLL settings", "retune the loop filter"],
    "ir_drop": ["retrim the regulator", "raise the supply setpoint"],
    "process_variation": ["update the bin limits", "move the part to a slower speed bin"],
    "crosstalk": ["adjust the IO drive strength", "retune the termination"],
    "contact_resistance": ["adjust the probe overdrive", "retune the contact force"],
}

# Test stages, as each fab names them.
STAGES = {
    "wafer_sort": {"A": ["wafer sort", "sort"], "B": ["wafer-level probe"], "C": ["CP", "WS"],
                   "D": ["wafer-level test"], "E": ["wafer test", "probe"], "F": ["wafer probe"]},
    "final_test": {"A": ["final test", "FT"], "B": ["final package test"], "C": ["FT"],
                   "D": ["final test"], "E": ["final test", "ft"], "F": ["final test"]},
    "burn_in": {"A": ["burn-in", "HTOL"], "B": ["burn-in"], "C": ["BI", "HTOL"],
                "D": ["HTOL", "life test"], "E": ["burn in"], "F": ["burn-in"]},
    "qualification": {"A": ["qual"], "B": ["reliability qualification"], "C": ["QUAL"],
                      "D": ["AEC-Q100 qualification"], "E": ["qualification"], "F": ["customer qualification"]},
    "customer_return": {"A": ["customer return", "RMA"], "B": ["a customer return"], "C": ["RMA", "FR"],
                        "D": ["customer return analysis"], "E": ["customer return", "rma"],
                        "F": ["a customer complaint", "RMA"]},
}

POWER_DOMAINS = ("VDD_CORE", "VDD_SRAM", "VDDIO", "AVDD_PLL", "VDD_GPU", "VDD_SOC", "VDD_AON", "VDDQ", "VCCINT")

# --- Sentence frames -------------------------------------------------------
# header: {dev} {wafer} {die} {stage} {cond}
HEADER = {
    "core": ["{dev} ({wafer}, die {die}) failed at {stage}.", "{dev} failed at {stage}."],
    "A": ["{dev} {wafer} die {die}, {stage} fail.", "{stage}: {dev} fails @ {cond}."],
    "B": ["Unit {dev} ({wafer}, die {die}) failed during {stage}.", "Unit {dev} failed {stage} at {cond}."],
    "C": ["{dev}/{wafer}/{die} {stage} FAIL.", "{stage} {dev} @{cond}."],
    "D": ["Device {dev} (wafer {wafer}, die {die}) failed {stage}.", "Device {dev} failed {stage} at {cond}."],
    "E": ["{dev} wafer {wafer} die {die} fail in {stage}.", "{stage} fail {dev} at {cond}."],
}

# impact: {n} {k} {pct}
IMPACT = {
    "single": {"core": ["Single unit, 1 of {n} tested."], "A": ["one-off, 1/{n}."], "B": ["Only one of {n} units is affected."],
               "C": ["1/{n} fail."], "D": ["One device out of {n} tested failed."], "E": ["only 1 unit of {n}."]},
    "few": {"core": ["{k} of {n} units affected."], "A": ["{k}/{n} units."], "B": ["{k} out of {n} units show the same signature."],
            "C": ["{k}/{n} fail."], "D": ["{k} devices out of {n} exhibit the failure."], "E": ["{k} units of {n} have same problem."]},
    "lot": {"core": ["Lot-wide, {pct}% fallout."], "A": ["whole lot hit, {pct}% fallout."], "B": ["The whole lot is affected ({pct}% fallout)."],
            "C": ["LOT FALLOUT {pct}%."], "D": ["The failure affects the entire lot ({pct}% fallout)."], "E": ["all lot is bad, {pct}% fail."]},
}

# observation of a phenomenon: {p} (a second paraphrase: {p2}), {dom}, {m} a measurement
OBSERVE_M = {
    "core": ["{p} on {dom}: {m}.", "Observed {p} on {dom} ({m})."],
    "A": ["{p} on {dom}, {m}.", "seeing {p}, {m}."],
    "B": ["The unit showed {p} on the {dom} domain, with {m}.", "Measurements indicate {p} ({m})."],
    "C": ["{dom}: {p}, {m}.", "{p} {m}."],
    "D": ["{p} was observed on {dom}; {m} was recorded.", "Analysis revealed {p} on the {dom} rail ({m})."],
    "E": ["we see {p} in {dom}, {m}.", "{p} happen on {dom}, {m}."],
    "heldout": ["Scope capture on {dom} caught {p} ({m}).", "Bench repro showed {p}, {m}."],
}
OBSERVE = {
    "core": ["{p} on {dom}.", "Observed {p}.", "Clear {p} in the datalog."],
    "A": ["seeing {p} on {dom}.", "{p} confirmed on ATE."],
    "B": ["The unit exhibits {p} on the {dom} domain.", "We observed {p} during the test."],
    "C": ["{dom}: {p}.", "{p} CONFIRMED."],
    "D": ["{p} was observed on {dom}.", "The device exhibited {p}, confirmed as {p2}."],
    "E": ["we see {p} on {dom}.", "have {p}, is {p2}."],
    "heldout": ["Logs show unmistakable {p}.", "{p} is plainly there on {dom}."],
}

# a phenomenon that is absent or was ruled out: {p}, {p2}, {m} (an in-spec reading)
NEGATE_M = {
    "core": ["{m}, so no {p}.", "{m} rules out {p}."],
    "A": ["{m}, within spec - no {p}.", "{m} OK, {p} ruled out."],
    "B": ["Readings were normal ({m}), which excludes {p}."],
    "C": ["{m} OK -> no {p}.", "{p}? no. {m}."],
    "D": ["With {m}, {p} can be excluded."],
    "E": ["no have {p}, {m}.", "{m} is ok, so not {p}."],
    "heldout": ["{m} leaves no room for {p}."],
}
NEGATE = {
    "core": ["No sign of {p}.", "Initial suspicion of {p} was ruled out.", "{p} was checked and ruled out.",
             "Suspected {p} at first, but no {p2} in the logs."],
    "A": ["{p} ruled out.", "no {p} seen.", "checked for {p} - none."],
    "B": ["There was no indication of {p}.", "We initially suspected {p}, but this was ruled out."],
    "C": ["{p}: NEG.", "no {p}.", "{p}? no {p2}."],
    "D": ["The possibility of {p} was investigated and excluded.", "No evidence of {p} was found."],
    "E": ["not {p}.", "we think first {p} but is not.", "no {p}, no {p2}."],
    "heldout": ["Nothing pointing to {p}.", "Thought it was {p} at first, it was not.", "{p} is off the table."],
}

# which phenomenon is primary: {p} primary, {s} secondary. Both orders occur,
# and the same function words precede both roles, so order and syntax (not
# word counts) tell the primary apart.
ATTRIBUTE = {
    "core": ["{s} is secondary to {p}.", "{p} caused the {s}.", "The {s} is a consequence of {p}.",
             "{p} came first; the {s} followed from it.", "Primary issue is {p}, the {s} is a side effect.",
             "{s} is a symptom; the underlying failure is {p}.", "Not a {s} problem at heart: {p} is the cause."],
    "A": ["{s} downstream of {p}.", "{p} drives the {s}.", "fixing {p} on the bench cleared the {s}."],
    "B": ["The {s} is believed to be a result of the {p}.", "Once the {p} was corrected, the {s} disappeared."],
    "C": ["{p} -> {s}.", "{s} <- {p}.", "{s} = 2ndary to {p}."],
    "D": ["The {s} is attributed to the {p}, which is considered the primary failure.",
          "The {p} is identified as the primary failure mode; the {s} is a secondary effect."],
    "E": ["{s} happen because of {p}.", "{p} make the {s}.", "first {p}, after that {s}."],
    "heldout": ["{s} is just fallout from {p}.", "Take away the {p} and the {s} goes away.",
                "{p} sits upstream of the {s}.", "{s} traces back to {p}."],
}
# two secondary phenomena {s} and {s2}, one primary {p}
ATTRIBUTE2 = {
    "core": ["{s} and {s2} are both secondary to {p}.", "{p} caused both the {s} and the {s2}.",
             "Both {s} and {s2} follow from {p}."],
    "A": ["{s} + {s2} downstream of {p}."], "B": ["The {s} and the {s2} are believed to result from the {p}."],
    "C": ["{p} -> {s}, {s2}."], "D": ["The {s} and the {s2} are attributed to the {p}, the primary failure."],
    "E": ["{s} and {s2} happen because of {p}."],
    "heldout": ["{s} and {s2} are just fallout from {p}."],
}
# a single phenomenon restated at the end
CONCLUDE = {
    "core": ["Conclusion: {p}.", "Failure mode: {p}."], "A": ["TL;DR {p}."], "B": ["In summary, the unit shows {p}."],
    "C": ["FM: {p}."], "D": ["The failure mode is classified as {p}."], "E": ["so problem is {p}."],
}

# root cause: {c} name, {ev} evidence
CAUSE = {
    "core": ["Root cause: {c}.", "FA confirmed {c}: {ev}.", "{ev}, consistent with {c}.", "FA: {ev}.",
             "Root cause is {c}."],
    "A": ["RC = {c}, {ev}.", "FA: {ev}. Calling it {c}.", "FA shows {ev}."],
    "B": ["Failure analysis identified {c} as the root cause; {ev}.", "The evidence ({ev}) points to {c}."],
    "C": ["RC: {c}.", "FA: {ev} => {c}.", "FA: {ev}."],
    "D": ["Root cause analysis attributed the failure to {c}. Supporting evidence: {ev}.",
          "Physical analysis found {ev}."],
    "E": ["reason is {c}, because {ev}.", "we find {ev}, so it is {c}."],
}

# a cause that was ruled out: {alt} its name, {alt_ev} the evidence that made it a suspect
CAUSE_NEGATE = {
    "core": ["{alt} was considered and ruled out.", "No evidence of {alt}.",
             "{alt_ev} was also seen, but it does not explain the fail.",
             "{alt} was suspected because of {alt_ev}, but ruled out."],
    "A": ["not {alt}.", "{alt} ruled out.", "{alt_ev} is a red herring."],
    "B": ["{alt} was initially suspected but excluded.",
          "We also found {alt_ev}, which turned out to be unrelated."],
    "C": ["{alt}: NEG.", "{alt_ev} - unrelated."], "D": ["{alt} was evaluated and excluded as a cause."],
    "E": ["is not {alt}.", "also {alt_ev}, but is not the reason."],
}

# a wrong first guess {alt} (with its evidence {alt_ev}) corrected: {c} {ev}
CAUSE_SWAP = {
    "core": ["Initially suspected {alt}, but {ev} points to {c}.", "Not {alt}: {ev}.",
             "{alt_ev} first suggested {alt}, but the real cause is {c}.",
             "{alt} was the first guess ({alt_ev}); FA found {ev} instead."],
    "A": ["looked like {alt} at first, but FA shows {ev}.", "not {alt} - {ev}, so {c}.",
          "red herring: {alt_ev}. Actual RC {c}."],
    "B": ["Although {alt} was suspected first, the analysis found {ev}.",
          "The {alt_ev} suggested {alt}, but {c} was confirmed."],
    "C": ["{alt}? NEG. FA: {ev}.", "{alt_ev} != RC. RC: {c}."],
    "D": ["{alt} was initially suspected; however, physical analysis found {ev}.",
          "Although {alt_ev} was noted, the root cause was determined to be {c}."],
    "E": ["first we think {alt}, but we find {ev}.", "{alt_ev}, but this is not reason, reason is {c}."],
}

# recommended action: {a}
ACTION = {
    "core": ["Next step: {a}.", "Recommendation: {a}."],
    "A": ["AI: {a}.", "plan: {a}."], "B": ["We recommend to {a}."], "C": ["ACT: {a}."],
    "D": ["Recommended disposition: {a}."], "E": ["we will {a}."],
}

SEVERITY_LINE = {"D": ["Severity: {sev}.", "Severity classification: {sev}."]}

# Sentences that carry no label information, with values that every class shares.
FILLER = {
    "core": ["Retested twice at {tc} with the same result.", "Datalog attached.", "Same lot as last week's ticket.",
             "Unit is on hold in the FA lab."],
    "A": ["ping me for the datalog.", "repro on ATE at {cond}."],
    "B": ["Further details are available in the attached datalog.", "The failure was reproduced at {cond}."],
    "C": ["DL attached.", "REPRO OK @{cond}."],
    "D": ["This report will be updated as the analysis proceeds.", "The failure was confirmed on a second tester at {cond}."],
    "E": ["pls check the log.", "we test again at {cond}, same."],
}
