"""LR-Drop beyond encoder-decoder models: decoder-only language models (lr_drop_transformer_lm)
and encoder-only classifiers (lr_drop_roberta + lr_drop_sentence_prediction), on data the
tests write and binarize with the real fairseq-preprocess."""
import math
import random
import re

import numpy
import pytest
import torch
import torch.nn.functional as F
from conftest import (EN, USER_DIR, attention_request, bench_module, classifier_diagnosis_matches_the_hub,
                      entropy, perturb_second_pass, row_entropies, run_cli)

TINY_ENCODER = ["--encoder-layers", "2", "--encoder-embed-dim", "32", "--encoder-ffn-embed-dim", "64",
                "--encoder-attention-heads", "4", "--max-positions", "64"]
TINY_DECODER = ["--decoder-layers", "2", "--decoder-embed-dim", "32", "--decoder-ffn-embed-dim", "64",
                "--decoder-attention-heads", "4"]
LM_TASK = ["--task", "language_modeling", "--tokens-per-sample", "16", "--sample-break-mode", "eos"]
TRAIN = ["--optimizer", "adam", "--lr", "0.002", "--cpu", "--log-format", "simple", "--log-interval", "1",
         "--seed", "1", "--no-epoch-checkpoints"]


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    """{"lm": monolingual data-bin, "cls": sentence_prediction data-bin (label: does the
    sentence mention a cat), "reg": the same sentences with a real-valued target}."""
    raw = tmp_path_factory.mktemp("families")
    rng = random.Random(0)
    for split, count in (("train", 200), ("valid", 24)):
        sentences = [[rng.choice(EN) for _ in range(rng.randint(2, 10))] for _ in range(count)]
        (raw / f"{split}.txt").write_text("".join(" ".join(s) + "\n" for s in sentences))
        (raw / f"{split}.label").write_text("".join(("pos" if "cat" in s else "neg") + "\n" for s in sentences))
        (raw / f"{split}.score").write_text("".join(f"{len(s) / 10:.1f}\n" for s in sentences))
    out = {name: raw / name for name in ("lm", "cls", "reg")}
    for destination, prefix in ((out["lm"], "txt"), (out["cls"] / "input0", "txt"), (out["cls"] / "label", "label")):
        run_cli("fairseq-preprocess", "--only-source", "--trainpref", raw / f"train.{prefix}",
                "--validpref", raw / f"valid.{prefix}", "--destdir", destination, "--workers", "1")
    # regression: the task reads label/<split>.label as one float per line
    (out["reg"] / "label").mkdir(parents=True)
    (out["reg"] / "input0").symlink_to(out["cls"] / "input0")
    for split in ("train", "valid"):
        (out["reg"] / "label" / f"{split}.label").write_text((raw / f"{split}.score").read_text())
    return out


def build(argv):
    """(task, model, criterion) built exactly as fairseq-train builds them."""
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    args = options.parse_args_and_arch(options.get_training_parser(), [*map(str, argv), "--user-dir", USER_DIR, "--cpu"])
    cfg = convert_namespace_to_omegaconf(args)
    task = tasks.setup_task(cfg.task)
    torch.manual_seed(1)
    model = task.build_model(cfg.model)
    return task, model, task.build_criterion(cfg.criterion)


def build_lm(corpora, *extra, arch="lr_drop_transformer_lm"):
    return build([corpora["lm"], *LM_TASK, "--arch", arch, *TINY_DECODER, "--dropout", "0.1", *extra])


def build_classifier(corpora, *extra, regression=False, arch="lr_drop_roberta"):
    target = ["--regression-target", "--num-classes", "1"] if regression else ["--num-classes", "2"]
    return build([corpora["reg" if regression else "cls"], "--task", "sentence_prediction", "--arch", arch,
                  *TINY_ENCODER, *target, "--dropout", "0.1", "--attention-dropout", "0", *extra])


def valid_batch(task, size=8):
    task.load_dataset("valid")
    dataset = task.dataset("valid")
    return dataset.collater([dataset[i] for i in range(size)])


def weights(alpha, beta, gamma):
    return ["--hidden-reg-weight", alpha, "--attn-reg-weight", beta, "--output-reg-weight", gamma]


def doubled(net_input):
    return {k: torch.cat([v, v]) if torch.is_tensor(v) else v for k, v in net_input.items()}


def hidden_term(inner_states, mask):
    """Independent L_HSR: mean over layers of the sum over real positions of the mean over
    channels of (h1 - h2)^2; inner_states[0] is the embedding output, then one per layer."""
    per_layer = []
    for state in inner_states[1:]:  # T x 2B x C
        first, second = state.float().chunk(2, dim=1)
        per_layer.append(((first - second) ** 2).mean(-1).t()[mask].sum())
    return torch.stack(per_layer).mean()


def test_layer_stacks_of_every_family(corpora, data_bin):
    from conftest import build as build_translation

    from fairseq_lrdrop.modules.layer_states import layer_stacks

    _, lm, _ = build_lm(corpora, "--criterion", "lr_drop_label_smoothed_cross_entropy")
    _, roberta, _ = build_classifier(corpora, "--criterion", "lr_drop_sentence_prediction")
    _, transformer, _ = build_translation(data_bin)
    assert {side: len(layers) for side, layers in layer_stacks(lm).items()} == {"decoder": 2}
    assert {side: len(layers) for side, layers in layer_stacks(roberta).items()} == {"encoder": 2}
    assert {side: len(layers) for side, layers in layer_stacks(transformer).items()} == {"encoder": 2, "decoder": 2}
    assert layer_stacks(roberta)["encoder"] is roberta.encoder.sentence_encoder.layers


def test_language_model_terms_match_independent_formulas(corpora):
    task, model, criterion = build_lm(corpora, "--criterion", "lr_drop_label_smoothed_cross_entropy",
                                      "--label-smoothing", "0", *weights(1, 0, 1))
    sample = valid_batch(task)
    model.train()
    torch.manual_seed(7)
    loss, sample_size, log = criterion(model, sample)
    torch.manual_seed(7)  # the same dropout draws, through the stock forward
    logits, extra = model(**doubled(sample["net_input"]))
    lprobs = F.log_softmax(logits.float(), dim=-1)
    target = torch.cat([sample["target"], sample["target"]])
    real = target.ne(task.dictionary.pad())
    nll = -lprobs.gather(-1, target.unsqueeze(-1)).squeeze(-1)[real].sum()
    p, q = lprobs.chunk(2)
    skl = (0.5 * ((p.exp() - q.exp()) * (p - q)).sum(-1))[real.chunk(2)[0]].sum()
    hidden = hidden_term(extra["inner_states"], sample["net_input"]["src_tokens"].ne(task.dictionary.pad()))
    assert sample_size == sample["ntokens"]
    torch.testing.assert_close(log["loss"], nll / 2, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(log["hidden_reg"], hidden, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(log["output_reg"], skl, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(loss, nll + hidden + skl, rtol=1e-5, atol=1e-3)
    assert hidden > 0 and skl > 0


def test_language_model_records_causal_self_attention_only(corpora):
    from fairseq_lrdrop.modules.layer_states import LayerStates

    task, model, criterion = build_lm(corpora, "--criterion", "lr_drop_label_smoothed_cross_entropy",
                                      "--label-smoothing", "0", *weights(0, 1, 0), "--attn-reg-maps", "keep")
    sample = valid_batch(task)
    model.train()
    request = criterion.layer_state_request(model)
    assert request.encoder_layers == () and request.decoder_layers == (0, 1)
    states = model(**doubled(sample["net_input"]), layer_states=request)[1]["layer_states"]
    assert isinstance(states, LayerStates) and not states.attention["encoder_self"] and not states.attention["decoder_cross"]
    bsz, length = sample["net_input"]["src_tokens"].shape
    real = sample["net_input"]["src_tokens"].ne(task.dictionary.pad()).repeat(2, 1)
    for probs in states.attention["decoder_self"].values():
        assert probs.shape == (4, 2 * bsz, length, length)
        assert probs.triu(1).abs().max() == 0  # no query attends to a later position
        torch.testing.assert_close(probs.sum(-1)[:, real], torch.ones_like(probs.sum(-1)[:, real]))
    # a module the model does not have is one clear error
    from fairseq_lrdrop.errors import UsageError
    _, model, criterion = build_lm(corpora, "--criterion", "lr_drop_label_smoothed_cross_entropy",
                                   *weights(0, 1, 0), "--attn-reg-modules", "encoder_self")
    with pytest.raises(UsageError, match="--attn-reg-modules encoder_self: .* has none of these attention modules"):
        criterion.layer_state_request(model)
    with pytest.raises(UsageError, match="--reg-encoder-layers: .* has no encoder"):
        build_lm(corpora, "--criterion", "lr_drop_label_smoothed_cross_entropy", *weights(1, 0, 0),
                 "--reg-encoder-layers", "0")[2].layer_state_request(model)


@pytest.mark.parametrize("alpha, beta, gamma, train", [(0, 0, 0, True), (1, 1, 1, False)])
def test_sentence_prediction_is_stock_without_weights_and_in_validation(corpora, alpha, beta, gamma, train):
    task, model, criterion = build_classifier(corpora, "--criterion", "lr_drop_sentence_prediction",
                                              *weights(alpha, beta, gamma))
    stock = build_classifier(corpora, "--criterion", "sentence_prediction")[2]
    sample = valid_batch(task)
    model.train(train)
    results = []
    for crit in (criterion, stock):
        model.zero_grad()
        torch.manual_seed(3)
        loss, sample_size, log = crit(model, sample)
        loss.backward()
        results.append((loss.detach(), sample_size, log, [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    (loss, size, log, grads), (stock_loss, stock_size, stock_log, stock_grads) = results
    assert torch.equal(loss, stock_loss) and size == stock_size == 8
    assert log.keys() == stock_log.keys() and all(torch.equal(torch.as_tensor(log[k]), torch.as_tensor(stock_log[k])) for k in log)
    assert len(grads) == len(stock_grads) > 0 and all(torch.equal(a, b) for a, b in zip(grads, stock_grads))


@pytest.mark.parametrize("regression", [False, True])
def test_sentence_prediction_terms_match_independent_formulas(corpora, regression):
    task, model, criterion = build_classifier(corpora, "--criterion", "lr_drop_sentence_prediction",
                                              *weights(1, 0, 1), regression=regression)
    sample = valid_batch(task)
    model.train()
    torch.manual_seed(5)
    loss, sample_size, log = criterion(model, sample)
    torch.manual_seed(5)
    head = criterion.classification_head_name
    logits, extra = model(**doubled(sample["net_input"]), classification_head_name=head, return_all_hiddens=True)
    target = sample["target"].view(-1)
    if regression:
        predictions = logits.view(-1).float()
        task_loss = ((predictions - torch.cat([target, target]).float()) ** 2).sum()
        first, second = predictions.chunk(2)
        output = ((first - second) ** 2).sum()
        assert "ncorrect" not in log
    else:
        lprobs = F.log_softmax(logits.float(), dim=-1)
        task_loss = -lprobs.gather(-1, torch.cat([target, target]).unsqueeze(-1)).sum()
        p, q = lprobs.chunk(2)
        output = (0.5 * (p.exp() - q.exp()) * (p - q)).sum()
        assert log["ncorrect"] == (p.argmax(-1) == target).sum()
    hidden = hidden_term(extra["inner_states"], sample["net_input"]["src_tokens"].ne(task.source_dictionary.pad()))
    assert sample_size == log["sample_size"] == len(target) == 8
    torch.testing.assert_close(log["loss"], task_loss / 2, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(log["output_reg"], output, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(log["hidden_reg"], hidden, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loss, task_loss + hidden + output, rtol=1e-5, atol=1e-4)
    assert output > 0 and hidden > 0


def test_sentence_prediction_logs_stock_pruning_penalty(corpora):
    """--mha-reg-scale-factor (fairseq's attention-head pruning penalty): the plugin optimises
    it once, adds it to the logged loss and logs mha_reg_loss, as stock sentence_prediction
    does. With every dropout 0 the two passes are equal, so the logged values equal stock's on
    the same batch, and the optimised loss is stock's plus one more pass of the task loss."""
    from fairseq.logging import metrics

    flags = ["--mha-reg-scale-factor", "0.1", "--dropout", "0", "--attention-dropout", "0"]
    task, model, criterion = build_classifier(corpora, "--criterion", "lr_drop_sentence_prediction",
                                              *weights(0.1, 0.1, 1), *flags)
    stock = build_classifier(corpora, "--criterion", "sentence_prediction", *flags)[2]
    sample = valid_batch(task)
    model.train()
    (loss, _, log), (stock_loss, _, stock_log) = (crit(model, sample) for crit in (criterion, stock))
    penalty = model._get_adaptive_head_loss()
    assert float(penalty) > 1  # far outside the tolerances below
    torch.testing.assert_close(log["mha_reg_loss"], penalty, rtol=0, atol=0)
    torch.testing.assert_close(torch.as_tensor(log["mha_reg_loss"]), torch.as_tensor(stock_log["mha_reg_loss"]))
    torch.testing.assert_close(log["loss"], stock_log["loss"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loss, stock_loss + (stock_log["loss"] - penalty), rtol=1e-5, atol=1e-4)
    logged = []
    for crit, out in ((criterion, log), (stock, stock_log)):
        with metrics.aggregate(new_root=True) as agg:
            crit.__class__.reduce_metrics([out])
            logged.append(agg.get_smoothed_values())
    for key in ("loss", "mha_reg_loss"):
        assert logged[0][key] == logged[1][key] > 0, key


def test_sentence_prediction_defaults_to_smaller_layer_weights_than_translation(corpora):
    """Command-line defaults as fairseq-train resolves them: alpha = beta = 0.01, gamma = 1 for
    sentence prediction (its task loss sums over sentences, the layer terms over tokens);
    0.1, 0.1, 5 for the label-smoothed criterion."""
    _, _, classifier = build_classifier(corpora, "--criterion", "lr_drop_sentence_prediction")
    _, _, lm = build_lm(corpora, "--criterion", "lr_drop_label_smoothed_cross_entropy")
    assert classifier.layers.weights == {"hidden_reg": 0.01, "attn_reg": 0.01} and classifier.output_reg_weight == 1.0
    assert lm.layers.weights == {"hidden_reg": 0.1, "attn_reg": 0.1} and lm.output_reg_weight == 5.0


def test_numpy_compat_is_narrow():
    import fairseq.data.language_pair_dataset as pairs
    import fairseq.data.token_block_dataset as blocks

    assert not hasattr(numpy, "compat")  # numpy 2 itself is left as it is
    for module in (blocks, pairs):
        assert module.np.compat.long is int and module.np.zeros is numpy.zeros


def _state(path):
    return torch.load(path, map_location="cpu", weights_only=False)["model"]


def _train(*args):
    return run_cli("fairseq-train", "--user-dir", USER_DIR, *TRAIN, *args)


def _same_weights(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _language_model_diagnosis_matches_unpadded_passes(checkpoint, data):
    """bench/diagnose.py on a language model, against one block at a time (no padding):
    output entropy, EOS probabilities and self-attention entropy equal; the attention is causal."""
    from fairseq import checkpoint_utils

    from fairseq_lrdrop.modules.layer_states import layer_stacks, recording_layer_states

    measures = bench_module("diagnose").model_measures(str(checkpoint), str(data), "valid", max_tokens=256)
    (model,), _, task = checkpoint_utils.load_model_ensemble_and_task([str(checkpoint)], arg_overrides={"data": str(data)})
    model.eval()
    task.load_dataset("valid")
    dataset, eos = task.dataset("valid"), task.dictionary.eos()
    output, at_end, inside, causal_bound, attention_rows = [], [], [], [], [0.0, 0]
    request = attention_request("decoder", len(model.decoder.layers))
    with torch.no_grad():
        for index in range(len(dataset)):
            item = dataset[index]
            with recording_layer_states(layer_stacks(model), request) as states:
                probs = model(item["source"][None])[0].float().softmax(-1)[0]  # T x V
            total, count = row_entropies(states, "decoder_self")
            attention_rows[0] += total
            attention_rows[1] += count
            output += entropy(probs).tolist()
            at_end += probs[item["target"].eq(eos), eos].tolist()
            inside += probs[item["target"].ne(eos), eos].tolist()
            causal_bound += [math.log(t + 1) for t in range(len(item["source"]))]  # row t sees t + 1 keys
    mean = lambda values: sum(values) / len(values)  # noqa: E731
    assert measures["output_entropy"] == pytest.approx(mean(output), rel=1e-5)
    assert measures["eos_prob_at_end"] == pytest.approx(mean(at_end), rel=1e-5)
    assert measures["eos_prob_inside"] == pytest.approx(mean(inside), rel=1e-5)
    attention = measures["attention_entropy"]
    assert attention["encoder_self"] is None and attention["decoder_cross"] is None
    # padded query rows or padding keys would move the batched mean away from the unpadded one
    assert attention["decoder_self"] == pytest.approx(attention_rows[0] / attention_rows[1], rel=1e-5)
    # an untrained-ish model attends almost uniformly: without the causal mask the mean would
    # pass the mean of log(keys a causal row sees)
    assert 0 < attention["decoder_self"] < mean(causal_bound)


def test_language_model_trains_evaluates_and_moves_to_stock(corpora, tmp_path):
    # --sample-break-mode eos goes through np.compat.long: with the plugin it trains on numpy 2
    lm = [corpora["lm"], *LM_TASK, *TINY_DECODER, "--max-tokens", "256", "--max-update", "3"]
    proc = _train(*lm, "--arch", "lr_drop_transformer_lm", "--criterion", "lr_drop_label_smoothed_cross_entropy",
                  "--label-smoothing", "0", *weights(0.1, 0.1, 5), "--save-dir", tmp_path / "lrdrop")
    log = proc.stdout + proc.stderr
    assert "hidden_reg" in log and "attn_reg" in log and "output_reg" in log and "valid on 'valid' subset" in log
    checkpoint = tmp_path / "lrdrop" / "checkpoint_last.pt"
    evaluated = run_cli("fairseq-eval-lm", corpora["lm"], "--user-dir", USER_DIR, "--path", checkpoint, "--cpu",
                        "--tokens-per-sample", "16", "--sample-break-mode", "eos", "--max-tokens", "256",
                        "--gen-subset", "valid")
    perplexity = float(re.search(r"Perplexity: ([0-9.]+)", evaluated.stdout + evaluated.stderr).group(1))
    assert math.isfinite(perplexity) and 1 < perplexity < 1000
    _language_model_diagnosis_matches_unpadded_passes(checkpoint, corpora["lm"])
    # LR-Drop -> stock transformer_lm (the plugin only for loading): the same weights
    _train(*lm, "--arch", "transformer_lm", "--criterion", "cross_entropy", "--restore-file", checkpoint,
           "--reset-optimizer", "--reset-dataloader", "--reset-meters", "--lr-scheduler", "fixed", "--lr", "0",
           "--max-update", "1", "--save-dir", tmp_path / "stock")
    assert _same_weights(_state(tmp_path / "stock" / "checkpoint_last.pt"), _state(checkpoint))


def test_roberta_fine_tunes_from_a_stock_checkpoint_and_moves_back(corpora, tmp_path):
    from fairseq.models.roberta import RobertaModel

    # a stock RoBERTa, pre-trained (two updates) with masked_lm as roberta.base was
    _train(corpora["cls"] / "input0", "--task", "masked_lm", "--arch", "roberta", *TINY_ENCODER,
           "--tokens-per-sample", "32", "--sample-break-mode", "eos", "--criterion", "masked_lm", "--max-tokens", "512", "--max-update", "2",
           "--save-dir", tmp_path / "pretrained")
    pretrained = _state(tmp_path / "pretrained" / "checkpoint_last.pt")
    classify = [corpora["cls"], "--task", "sentence_prediction", "--num-classes", "2", *TINY_ENCODER,
                "--batch-size", "16", "--reset-optimizer", "--reset-dataloader", "--reset-meters",
                "--best-checkpoint-metric", "accuracy", "--maximize-best-checkpoint-metric"]
    proc = _train(*classify, "--arch", "lr_drop_roberta", "--criterion", "lr_drop_sentence_prediction",
                  *weights(0.1, 0.1, 1), "--restore-file", tmp_path / "pretrained" / "checkpoint_last.pt",
                  "--max-update", "4", "--save-dir", tmp_path / "finetuned")
    log = proc.stdout + proc.stderr
    assert "hidden_reg" in log and "output_reg" in log and "valid_accuracy" not in log  # json-free simple log
    assert "| valid on 'valid' subset |" in log and "| accuracy " in log
    finetuned_path = tmp_path / "finetuned" / "checkpoint_last.pt"
    finetuned = _state(finetuned_path)
    # every pre-trained weight was there to be fine-tuned, and the head was added
    assert set(pretrained) - set(finetuned) <= {k for k in pretrained if k.startswith("encoder.lm_head")}
    assert any(k.startswith("classification_heads.sentence_classification_head") for k in finetuned)
    # LR-Drop -> stock roberta: the same weights
    _train(*classify, "--arch", "roberta", "--criterion", "sentence_prediction", "--restore-file", finetuned_path,
           "--lr-scheduler", "fixed", "--lr", "0", "--max-update", "1", "--save-dir", tmp_path / "stock")
    assert _same_weights(_state(tmp_path / "stock" / "checkpoint_last.pt"), finetuned)
    # the hub interface loads the fine-tuned classifier and predicts
    hub = RobertaModel.from_pretrained(str(tmp_path / "finetuned"), "checkpoint_last.pt",
                                       data_name_or_path=str(corpora["cls"]), bpe=None, user_dir=USER_DIR)
    hub.eval()
    tokens = hub.task.source_dictionary.encode_line("the cat sees a dog", append_eos=True).long()
    tokens = torch.cat([torch.tensor([hub.task.source_dictionary.bos()]), tokens])
    lprobs = hub.predict("sentence_classification_head", tokens)
    assert lprobs.shape == (1, 2) and torch.allclose(lprobs.exp().sum(), torch.tensor(1.0))
    classifier_diagnosis_matches_the_hub(hub, finetuned_path, corpora["cls"])


def attention_term(inputs, query_mask):
    """Independent L_MHAR (symmetric KL) from each recorded self-attention call's inputs:
    per head, softmax(q k^T + masks) with q = q_proj(x) * head_dim^-0.5 and k = k_proj(x);
    0.5 * sum_k (p - q)(log p - log q) between the two halves of the batch, summed over real
    queries, averaged over heads, then over modules. inputs: (module, kwargs) per call."""
    per_module = []
    for module, call in inputs:
        x = call["query"].float()  # T x 2B x C
        length, batch, _ = x.shape
        heads, head_dim = module.num_heads, module.head_dim

        def split(y):  # T x 2B x C -> H x 2B x T x d
            return y.view(length, batch, heads, head_dim).permute(2, 1, 0, 3)

        scores = split(module.q_proj(x) * head_dim ** -0.5) @ split(module.k_proj(x)).transpose(-1, -2)
        if call.get("attn_mask") is not None:
            scores = scores + call["attn_mask"]
        if call.get("key_padding_mask") is not None:
            scores = scores.masked_fill(call["key_padding_mask"][None, :, None, :].bool(), float("-inf"))
        probs = scores.softmax(-1)  # H x 2B x T x S
        p, q = probs.chunk(2, dim=1)
        log_ratio = p.clamp_min(1e-38).log() - q.clamp_min(1e-38).log()
        skl = (0.5 * (p - q) * log_ratio).sum(-1).mean(0)  # B x T
        per_module.append(skl[query_mask].sum())
    return torch.stack(per_module).mean()


def record_self_attention_inputs(layers):
    """Keep (module, kwargs) of every self-attention call of these layers."""
    calls = []
    for layer in layers:
        layer.self_attn.register_forward_pre_hook(
            lambda module, args, kwargs: calls.append((module, {k: v for k, v in kwargs.items()})), with_kwargs=True)
    return calls


@pytest.mark.parametrize("family", ["lm", "roberta"])
def test_attention_term_matches_a_recomputation_from_the_projections(corpora, family):
    """beta > 0 on the decoder-only and encoder-only families: the logged attn_reg equals the
    symmetric KL recomputed from each layer's q/k projections of the inputs the layer got
    (causal mask for the language model, padding masks), within float32 rounding."""
    if family == "lm":
        task, model, criterion = build_lm(corpora, "--criterion", "lr_drop_label_smoothed_cross_entropy",
                                          "--attention-dropout", "0.1", *weights(0, 1, 0))
        layers, pad = model.decoder.layers, task.dictionary.pad()
    else:
        task, model, criterion = build_classifier(corpora, "--criterion", "lr_drop_sentence_prediction",
                                                  "--dropout", "0.3", *weights(0, 1, 0))
        layers, pad = model.encoder.sentence_encoder.layers, task.source_dictionary.pad()
    sample = valid_batch(task)
    tokens = sample["net_input"]["src_tokens"]
    assert tokens.eq(pad).any()  # padded keys and queries are in the batch
    calls = record_self_attention_inputs(layers)
    model.train()
    torch.manual_seed(9)
    _, _, log = criterion(model, sample)
    assert len(calls) == len(layers)
    with torch.no_grad():
        expected = attention_term(calls, tokens.ne(pad))
    assert float(log["attn_reg"]) > 1e-4
    torch.testing.assert_close(torch.as_tensor(log["attn_reg"]).float(), expected, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("family", ["lm", "roberta"])
def test_padding_changes_no_term(corpora, family):
    """Three more pad columns (right padding, as these tasks collate) change neither the loss
    nor any logged term, for the decoder-only and encoder-only families (dropout 0; the passes
    differ by a token-dependent offset on the second pass's embeddings)."""
    if family == "lm":
        task, model, criterion = build_lm(corpora, "--criterion", "lr_drop_label_smoothed_cross_entropy",
                                          "--dropout", "0", *weights(1, 1, 1))
        embedding, pad = model.decoder.embed_tokens, task.dictionary.pad()
        keys = ("loss", "nll_loss", "hidden_reg", "attn_reg", "output_reg")
    else:
        task, model, criterion = build_classifier(corpora, "--criterion", "lr_drop_sentence_prediction",
                                                  "--dropout", "0", *weights(1, 1, 1))
        embedding, pad = model.encoder.sentence_encoder.embed_tokens, task.source_dictionary.pad()
        keys = ("loss", "hidden_reg", "attn_reg", "output_reg")
    perturb_second_pass(embedding)
    model.train()
    sample = valid_batch(task)
    padded = {**sample, "net_input": {**sample["net_input"],
                                      "src_tokens": F.pad(sample["net_input"]["src_tokens"], (0, 3), value=pad)}}
    if family == "lm":
        padded["target"] = F.pad(sample["target"], (0, 3), value=pad)
    results = []
    for s in (sample, padded):
        torch.manual_seed(3)
        results.append(criterion(model, s))
    (loss, _, log), (padded_loss, _, padded_log) = results
    torch.testing.assert_close(padded_loss, loss, rtol=1e-5, atol=1e-5)
    for key in keys:
        assert float(log[key]) > 1e-4, key
        assert float(padded_log[key]) == pytest.approx(float(log[key]), rel=1e-5), key
