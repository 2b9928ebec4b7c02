"""Command line: train one model of the book under torchrun (DistributedDataParallel)."""

from __future__ import annotations

import argparse
import json

import torch.distributed as dist

from nbs_lib.core.distributed import init_from_env, is_main, world_size
from nbs_lib.core.parameters import as_dict
from nbs_lib.core.profiles import Profile, get_profile
from nbs_lib.core.runs import RunCache
from nbs_lib.methods.train.recipes import train_model


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="torchrun --nproc_per_node=N -m nbs_lib.methods.train.launch",
        description="Train one model of the book with DistributedDataParallel (nbs_lib.methods.train.recipes.train_model).")
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--regime", required=True, choices=("standard", "partial", "full"))
    parser.add_argument("--profile", default="mini")
    parser.add_argument("--overrides", default=None,
                        help='profile fields as JSON, as a notebook\'s `overrides` (e.g. \'{"epochs": 1}\'): '
                             "a notebook run with the same profile and overrides then finds this model")
    parser.add_argument("--arch", default=None, help="default: the profile's backbone")
    parser.add_argument("--weights", default="imagenet", help="'imagenet', 'none' or a weights file")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=None,
                        help="an explicit epoch count: a model of its own that no notebook asks for; "
                             "to train a notebook's shortened run use --overrides")
    parser.add_argument("--lr-f", type=float, default=None)
    parser.add_argument("--lr-g", type=float, default=None)
    parser.add_argument("--augment", default=None)
    parser.add_argument("--adversarial", default=None, help="e.g. PGD-7#8")
    parser.add_argument("--compile", action="store_true", help="torch.compile the training step")
    parser.add_argument("--cache", default=None, help="run cache folder (default: $NBS_CACHE or ~/.cache/nbs_lib)")
    return parser


def profile_of(args: argparse.Namespace) -> Profile:
    """The profile the arguments name, with their ``--overrides`` applied (as a notebook applies its own)."""
    return get_profile(args.profile, as_dict(args.overrides, "--overrides"))


def main(argv=None) -> dict:
    """Train as the arguments say on every rank; rank 0 prints (and all return) a summary."""
    args = _parser().parse_args(argv)
    device = init_from_env()
    try:
        trained = train_model(
            args.dataset, args.regime, profile=profile_of(args), arch=args.arch,
            weights=None if args.weights == "none" else args.weights, seed=args.seed, device=device,
            lr_f=args.lr_f, lr_g=args.lr_g, epochs=args.epochs, augment=args.augment,
            cache=RunCache(args.cache), progress=is_main(), adversarial=args.adversarial,
            compile=args.compile)
        summary = {"world_size": world_size(), "dataset": args.dataset, "regime": args.regime,
                   "val_acc": trained.val_acc, "lr_search": trained.lr_search,
                   "history": trained.history}
        if is_main():
            print(json.dumps(summary, indent=1))
        return summary
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
