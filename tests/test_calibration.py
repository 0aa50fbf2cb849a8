"""The served model's calibration settings (bertlab.calibration): validated, saved and loaded exactly."""
import numpy as np
import pytest

from bertlab.calibration import Calibration, calibration_path


def test_round_trip_and_decisions(tmp_path):
    c = Calibration(temperature=2.0, threshold=0.6, reference=[0.9, 0.5], target_accuracy=0.95)
    path = c.save(calibration_path(tmp_path / "m.onnx"))
    assert path.name == "m.onnx.calibration.json"
    assert Calibration.load(path) == c
    p = c.probabilities([[2.0, 0.0], [0.0, 0.0]])
    np.testing.assert_allclose(p[0], [np.exp(1) / (np.exp(1) + 1), 1 / (np.exp(1) + 1)])
    np.testing.assert_allclose(p[1], [0.5, 0.5])
    assert c.confident(p.max(-1)).tolist() == [True, False]


@pytest.mark.parametrize("kwargs,match", [({"temperature": 0}, "temperature"), ({"temperature": float("nan")}, "temperature"),
                                          ({"threshold": 1.5}, "threshold"), ({"reference": [2.0]}, "reference"),
                                          ({"target_accuracy": 0}, "target_accuracy")])
def test_bad_settings_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Calibration(**kwargs)


def test_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        Calibration.load(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a calibration JSON"):
        Calibration.load(tmp_path / "bad.json")
    (tmp_path / "extra.json").write_text('{"temperature": 1, "colour": "red"}')
    with pytest.raises(ValueError, match="expected an object"):
        Calibration.load(tmp_path / "extra.json")
