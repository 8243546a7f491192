"""Seconds per evaluation of each dataset's whole validation split, by evaluation batch size.

    python -m perf.eval_batches [--config search_spaces/default.yaml] [--precisions fp32,bf16]
                                [--sizes 1024,64,32,16] [--rounds 3] [--max-length N]

Every encoder and dataset of the config, with its pretrained weights, on this machine's
device. The split is sorted by length (as a trial evaluates it) and cut into batches of each
size, with no bound on their tokens; a size over the split's length is one batch of all of
it. The sizes alternate within each round, after a warm-up pass, and the table gives the
median of the rounds. Prints a line per encoder, dataset and precision; writes nothing.
"""

from __future__ import annotations

import argparse
import sys
from functools import partial

import torch

from perf import interleaved_medians

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}


def _sizes(text: str) -> list[int]:
    sizes = [int(size) for size in text.split(",")]
    if min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"batch sizes must be positive, got {text}")
    return sizes


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m perf.eval_batches", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="search_spaces/default.yaml", help="default: %(default)s")
    parser.add_argument("--precisions", default="fp32,bf16", help="of fp32, bf16 (default: %(default)s)")
    parser.add_argument("--sizes", type=_sizes, default=_sizes("1024,64,32,16"), help="default: 1024,64,32,16")
    parser.add_argument("--rounds", type=int, default=3, help="default: %(default)s")
    parser.add_argument("--max-length", type=int, help="default: the config's training.max_length")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    unknown = sorted(set(args.precisions.split(",")) - set(PRECISIONS))
    if unknown:
        print(f"error: --precisions: unknown {', '.join(unknown)}; expected some of fp32, bf16", file=sys.stderr)
        return 2
    from benchmark.config.spec import load_config
    from benchmark.data import dataset as data
    from benchmark.data.tokenization import tokenize_split
    from benchmark.errors import BenchmarkError
    from benchmark.train import encoders
    from benchmark.train.loop import LoopSettings, pick_device, predict

    try:
        config = load_config(args.config)
    except BenchmarkError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    device, max_length = pick_device(), args.max_length or config.training.max_length
    for dataset_name, spec in config.datasets.items():
        loaded = data.load_dataset(dataset_name, spec, config.training.seed)
        for encoder_name, encoder_spec in config.encoders.items():
            encoder = encoders.resolve(encoder_name, encoder_spec)
            validation = tokenize_split(encoders.load_tokenizer(encoder), loaded.validation, max_length)
            model = encoders.load_classifier(encoder, loaded.label_names, 0.0).to(device)
            for precision in args.precisions.split(","):
                seconds = interleaved_medians({
                    str(size): partial(predict, model, validation, LoopSettings(
                        eval_every_examples=1, eval_batch_size=size, seed=0, device=device,
                        autocast_dtype=PRECISIONS[precision]))
                    for size in args.sizes}, args.rounds)
                print(f"{dataset_name} ({len(validation)} examples, mean length {validation.lengths.mean():.1f} of "
                      f"{max_length}) {encoder_name} {precision} on {device.type}: "
                      + ", ".join(f"{size}: {median:.2f} s" for size, median in seconds.items()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
