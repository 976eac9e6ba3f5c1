"""Analysis of progtune results: pandas, pyarrow and matplotlib only (never torch or ray)."""
