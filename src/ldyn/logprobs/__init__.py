"""Teacher-forced log-probabilities log π(y | x) = Σ_t log π(y_t | x, y_<t), in three row layouts.

Which to call:

| you have | you want | call |
|---|---|---|
| a padded `Batch` (prompt + response per row) | per-row sums, differentiable (training) | `padded.scored_logps` |
| the same | (logits, aligned labels) for statistics | `padded.response_logits` |
| the same | per-row sums, plainly (the slow twin every layout is tested against) | `padded.sequence_logps` |
| prompts and their responses (`SharedRows`) | scored-token logits, by the fastest layout | `choose.rows_logits` |
| a model that takes packed rows (`packable`) | a training batch's row sums, no padding | `packed.packed_logps` |
| scored-token logits (N, V) | per-row sums | `tokens.rows_logps` |
| padded logits and labels | row sums / full-vocabulary statistics | `tokens.logps_from_logits`, `token_statistics` |

`padded` is the one module that knows the teacher-forcing shift and mask; `shared_prompt` runs each prompt once
into a key/value cache (probing), `packed` writes each prompt once followed by its responses in one row (a CPU's
training forward), and `choose` is the one place that picks among them for a model and device.
"""
