# %% [markdown]
# # How much of Alice's network can Bob reuse?
#
# The engine from Python, cell by cell (`# %%` cells: open it in Jupyter through jupytext, in
# VS Code, or run it whole with `python examples/transfer_notebook.py`). It builds a pair of
# correlated datasets, sweeps the retrain-from depth `l` and the label correlation `beta` with a
# small mlp, loads the results as a pandas DataFrame and plots Bob's accuracy against `beta`.
#
# The defaults take a few minutes on a laptop CPU and need MNIST and Fashion-MNIST under
# `$ENGINE_DATA_ROOT` (torchvision's layout; downloaded when missing and allowed). The
# `EXAMPLE_*` variables shrink it (the test suite runs it on tiny generated sources).

# %%
import os
from pathlib import Path

import matplotlib
matplotlib.use("Agg")  # files only; in Jupyter, drop this line to see the figure inline
import matplotlib.pyplot as plt

import engine

PAIR = os.environ.get("EXAMPLE_PAIR", "mnist:fashion")
OUT = Path(os.environ.get("EXAMPLE_OUT", "out/example"))
N_TRAIN = int(os.environ.get("EXAMPLE_N_TRAIN", "5000"))
N_TEST = int(os.environ.get("EXAMPLE_N_TEST", "1000"))
BETAS = [0.0, 0.5, 1.0]

# %% [markdown]
# ## 1. Datasets: one per beta (reused when already built)

# %%
for beta in BETAS:
    print(engine.build_data(PAIR, beta, n_train=N_TRAIN, n_test=N_TEST, out=OUT / "datasets"))

# %% [markdown]
# ## 2. The sweep: every depth l, fine-tuned and re-initialised, and the baselines
# The same options as `engine sweep`; a bad one raises `engine.EngineError` with the CLI's message.

# %%
try:
    engine.sweep(pair=PAIR, betas=[0, 2], out=OUT, dry_run=True)
except engine.EngineError as exc:
    print("refused:", exc)

res = engine.sweep(pair=PAIR, betas=BETAS, arch="mlp", depth=2, width=64, layers="all",
                   seeds=[0], epochs=2, alice_epochs=2, n_train=N_TRAIN, n_test=N_TEST,
                   device="cpu", out=OUT)
print(f"{res.total} runs, {res.done_before} stored before, {res.ran} recorded now")
print(engine.status(OUT)["state"])

# %% [markdown]
# ## 3. The results as a DataFrame

# %%
df = engine.results(OUT)
table = (df[df["mode"] == "finetune"]
         .pivot_table(index="retrain_from", columns="beta", values="test_acc", aggfunc="mean"))
print((100 * table).round(1))

# %% [markdown]
# ## 4. One figure: Bob's accuracy against beta, one line per depth

# %%
fig, ax = plt.subplots(figsize=(6, 4))
for l, row in table.iterrows():
    ax.plot(row.index, 100 * row.to_numpy(), marker="o", label=f"l = {l}")
ax.axhline(100 * df["chance"].mean(), color="grey", linestyle="--", label="chance")
ax.set(xlabel="beta (label correlation with Alice's task)", ylabel="Bob test accuracy (%)",
       title=f"{PAIR}, mlp, finetune")
ax.legend()
figure = OUT / "acc_vs_beta.png"
fig.savefig(figure, dpi=100)
print(figure)

# %% [markdown]
# `engine.report(OUT)` writes every figure of `engine report`, and `OUT/report/report.html`.
