"""python -m fastddpm.metrics.train_features --data fashion-mnist|digits

Train the feature network of a data set on its train split (deterministic for a seed and a
thread count: one thread by default), report its test accuracy, and write the weights and a
JSON card (command, accuracy, config) into fastddpm/metrics/weights/.
"""

import argparse
import json
import sys
import time

import torch
import torch.nn.functional as F

from ..io import data as datasets
from . import features

RECIPES = {  # epochs, batch, lr: a few CPU minutes each
    "fashion-mnist": dict(epochs=8, batch=128, lr=1e-3),
    "digits": dict(epochs=60, batch=64, lr=2e-3),
}


def accuracy(net, x, y, batch: int = 1000) -> float:
    net.eval()
    with torch.no_grad():
        hits = sum(int((net(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum()) for i in range(0, len(y), batch))
    return hits / len(y)


def train(data: str, seed: int = 0, out=features.WEIGHTS, progress: bool = True) -> dict:
    torch.manual_seed(seed)
    r = RECIPES[data]
    x, y = datasets.labelled(data, "train")
    xt, yt = datasets.labelled(data, "test")
    net = features.FeatureNet(features.CONFIGS[data])
    opt = torch.optim.Adam(net.parameters(), lr=r["lr"])
    g = torch.Generator().manual_seed(seed)
    steps = r["epochs"] * ((len(y) + r["batch"] - 1) // r["batch"])
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=r["lr"], total_steps=steps)
    t0 = time.time()
    for epoch in range(r["epochs"]):
        net.train()
        perm = torch.randperm(len(y), generator=g)
        for i in range(0, len(y), r["batch"]):
            idx = perm[i : i + r["batch"]]
            xb = x[idx]
            shift = torch.randint(-1, 2, (2,), generator=g).tolist()  # a one-pixel jitter
            xb = torch.roll(xb, shifts=shift, dims=(2, 3))
            loss = F.cross_entropy(net(xb), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        if progress:
            sys.stderr.write(f"\r{data}: epoch {epoch + 1}/{r['epochs']}  test accuracy {accuracy(net, xt, yt):.4f}  "
                             f"{time.time() - t0:.0f} s ")
    if progress:
        sys.stderr.write("\n")
    return ship(net, data, seed, r, out, xt, yt, len(y), time.time() - t0)


def ship(net, data: str, seed: int, recipe: dict, out, xt, yt, n_train: int, seconds: float) -> dict:
    """Store the weights in float16 (half the size; the features are computed in float32 from
    them) and the card beside them, with the accuracy of the weights as stored."""
    from safetensors.torch import save_file

    half = {k: v.detach().half().contiguous() for k, v in net.state_dict().items()}
    net.load_state_dict({k: v.float() for k, v in half.items()})
    acc = accuracy(net, xt, yt)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{data}.safetensors"
    save_file(half, str(path))
    card = dict(
        data=data, command=f"python -m fastddpm.metrics.train_features --data {data} --seed {seed}", seed=seed,
        threads=torch.get_num_threads(), torch=torch.__version__, test_accuracy=acc, train_images=n_train, test_images=len(yt),
        feature_layer="penultimate (ReLU of the first linear layer)", config=features.config_dict(features.CONFIGS[data]),
        recipe=recipe, seconds=round(seconds, 1), weights_dtype="float16",
    )
    path.with_suffix(".json").write_text(json.dumps(card, indent=1) + "\n")
    return card


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m fastddpm.metrics.train_features", description=__doc__.split("\n")[0])
    ap.add_argument("--data", choices=sorted(features.CONFIGS), required=True, help="which data set's feature network")
    ap.add_argument("--seed", type=int, default=0, help="the training seed (default 0)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: bitwise reproducible)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    card = train(args.data, args.seed)
    print(json.dumps(card, indent=1))
    return card


if __name__ == "__main__":
    main()
