import torch
from torch.utils.data import TensorDataset

import flops_fit
from flops_fit.examples.gpt import GPT, lm_loss

torch.manual_seed(0)
x = torch.randint(0, 64, (64, 16))
ds = TensorDataset(x, x)
res = flops_fit.find_optimal(
    GPT.from_config,
    "d_model",
    ds,
    lm_loss,
    [1e9, 3e9, 1e10, 3e10],
    model_kwargs={"vocab_size": 64, "num_layers": 2, "max_seq_len": 16},
    mode="mock",
    num_model_sizes=5,
    size_multiple=8,
    output_dir="find_optimal_v0_1",
    train_config=flops_fit.TrainConfig(batch_size=4),
)
print(res.summary())
