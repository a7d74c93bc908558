"""The contract every stage shares, torch-free: experiments and their ids, the train settings, the runs
table and its readers, the append-only ledger, atomic file writes, the sweep folder's file names and
argument validation. Nothing here imports another layer of flops-fit."""
