from click.testing import CliRunner

from model.cli import main


def test_help_explains_the_flags():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for flag in ("--preset", "--n-layer", "--block-size", "--learning-rate", "--max-iters", "--resume",
                 "--dtype", "--compile", "--data"):
        assert flag in result.output
    assert "Train a GPT" in result.output


def test_bad_flag_value_names_the_flag():
    result = CliRunner().invoke(main, ["--n-layer", "0"])
    assert result.exit_code == 2
    assert "Invalid value for '--n-layer': 0 is not in the range x>=1." in result.output


def test_invalid_combination_is_one_clear_line(tmp_path):
    result = CliRunner().invoke(main, ["--n-embd", "100", "--n-head", "6", "--out", str(tmp_path)])
    assert result.exit_code == 2  # a usage error, as click's own
    assert result.output.strip() == (
        "Error: n_embd must be divisible by n_head: 100 % 6 != 0; pick n_embd as a multiple of 6"
    )


def test_missing_data_file(tmp_path):
    result = CliRunner().invoke(main, ["--data", str(tmp_path / "none.txt"), "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "none.txt does not exist; pass --data shakespeare or a text file" in result.output
