"""Evaluations: a dataset's questions run under several strategies, scored, compared per dollar.

- `models`: the contract (pydantic): questions, strategies, what each run gave, the report.
- `datasets`: reading and writing JSONL datasets, generating arithmetic and multiple-choice ones,
  and solving the generated questions (what the test model server's solver answers with).
- `scoring`: the prompt each strategy is asked, reading a final answer as a vote reads it,
  comparing it with the reference, and asking a judge model when the comparison needs one.
- `stats`: accuracy intervals and paired comparisons between strategies.
- `report`: the per-strategy summary of an evaluation's results.
"""
