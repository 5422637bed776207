"""`caspi.models.loading.load_trained`: the one way trained tensors reach a model (resume, eval, export, audit)."""

import pytest
import torch

from caspi.errors import CheckpointError
from caspi.models.loading import AUX_PREFIX, load_trained


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 2)).to(torch.bfloat16)


def test_trained_tensors_replace_the_models_and_keep_its_dtype():
    model = _model()
    weights = {"0.weight": torch.ones(2, 3, dtype=torch.float32)}  # float32 masters, as checkpoints hold them
    load_trained(model, weights)
    assert model[0].weight.dtype == torch.bfloat16
    assert torch.equal(model[0].weight, torch.ones(2, 3, dtype=torch.bfloat16))
    assert not torch.equal(model[1].weight, torch.ones(2, 2, dtype=torch.bfloat16))  # untouched


def test_aux_tensors_go_to_their_module_or_are_skipped():
    model, head = _model(), torch.nn.Linear(2, 4)
    weights = {f"{AUX_PREFIX}ctc_head.weight": torch.full((4, 2), 0.5), f"{AUX_PREFIX}ctc_head.bias": torch.zeros(4)}
    load_trained(model, weights, aux={"ctc_head.": head})  # training: the CTC head gets its tensors
    assert torch.equal(head.weight, torch.full((4, 2), 0.5)) and torch.equal(head.bias, torch.zeros(4))
    before = [p.clone() for p in model.parameters()]
    load_trained(model, weights)  # eval/export: the head is not part of the model
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_a_tensor_the_model_lacks_names_the_source():
    with pytest.raises(CheckpointError, match=r"runs/x/checkpoints/step-000002: tensors not in the model: "
                                              r"decoder\.proj\.weight"):
        load_trained(_model(), {"decoder.proj.weight": torch.zeros(1)}, source="runs/x/checkpoints/step-000002")
