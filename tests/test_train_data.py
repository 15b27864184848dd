"""What ``samtone-tf train`` trains and evaluates on: one source split by the format's
registry entry, or a separate evaluation set (``eval_data`` / ``--eval-data``)."""

import json
import warnings

import pytest

from samtone_tf import cli
from samtone_tf.data import beir, reqa
from samtone_tf.data.pairs import training_pairs_from_qrels
from samtone_tf.training.run import TrainConfig, _load_training_data
from tests._requirements import SCIFACT, SQUAD, needs_data

pytestmark = pytest.mark.keras_independent


def _config(**kwargs):
    return TrainConfig(**dict({"encoder": "pretrained:minilm-l6"}, **kwargs))


@needs_data(SQUAD)
def test_one_squad_file_is_split_by_article():
    pairs, evaluation = _load_training_data(_config(data=SQUAD, format="squad"))
    train_json, dev_json = reqa.split_by_article(SQUAD, 0.2, 0)
    assert pairs == training_pairs_from_qrels(*reqa.build_reqa(train_json))
    assert evaluation == tuple(reqa.build_reqa(dev_json))
    corpus, queries, qrels = evaluation
    assert not {q for q, *_ in pairs} & set(queries)  # no question both trained and tested


@needs_data(SQUAD)
def test_eval_data_replaces_the_split(tmp_path):
    with open(SQUAD, encoding="utf-8") as f:
        squad = json.load(f)
    held = dict(squad, data=squad["data"][:2])
    eval_file = tmp_path / "dev.json"
    eval_file.write_text(json.dumps(held), encoding="utf-8")
    pairs, evaluation = _load_training_data(
        _config(data=SQUAD, format="squad", eval_data=str(eval_file)))
    assert pairs == training_pairs_from_qrels(*reqa.build_reqa(SQUAD))  # all of the file
    assert evaluation == tuple(reqa.build_reqa(str(eval_file)))
    assert len(evaluation[1]) < len(pairs)
    # and no evaluation set is read when evaluation is off
    assert _load_training_data(_config(data=SQUAD, format="squad", eval_data=str(eval_file),
                                       evaluate=False))[1] is None


@needs_data(SCIFACT)
@needs_data(SQUAD)
def test_eval_data_in_another_format():
    pairs, evaluation = _load_training_data(
        _config(data=SCIFACT, format="beir", eval_data=SQUAD, eval_format="squad"))
    corpus, queries, qrels = beir.load_beir(SCIFACT, "train")
    assert pairs == training_pairs_from_qrels(corpus, queries, qrels)
    assert evaluation == tuple(reqa.build_reqa(SQUAD))  # squad's default split: all


def test_validation_of_the_evaluation_settings():
    with pytest.raises(ValueError, match="`format` must be one of"):
        _config(data="x", format="csv").validate()
    with pytest.raises(ValueError, match="`eval_format` is given without `eval_data`"):
        _config(data="x", eval_format="squad").validate()
    with pytest.raises(ValueError, match="`format` must be one of"):
        _config(data="x", eval_data="y", eval_format="csv").validate()
    with pytest.warns(UserWarning, match="`dev_fraction` .* is unused"):
        _config(data="x", format="squad", eval_data="y", dev_fraction=0.3).validate()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _config(data="x", format="squad", eval_data="y").validate()


def test_cli_train_flags_take_the_evaluation_set():
    args = cli.build_parser().parse_args(
        ["train", "--data", "a.json", "--format", "squad", "--eval-data", "b", "--eval-format",
         "beir"])
    assert (args.eval_data, args.eval_format) == ("b", "beir")
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["train", "--eval-format", "csv"])
