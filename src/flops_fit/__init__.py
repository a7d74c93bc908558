"""flops-fit (package exports are wired up once every module has landed)."""
