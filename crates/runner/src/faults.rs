//! Fault injection for the end-to-end crash and resume tests (`tests/run.rs`).

/// The step at which environment variable `name` asks `job` to fail, if it does:
/// `DISTILLERY_STOP_AFTER=N` stops the distillation after global step N as if interrupted (its
/// checkpoints stay; `--resume` continues); `DISTILLERY_ABORT_IN_CHECKPOINT=N` aborts the
/// process halfway through writing step N's checkpoint. `teacher:N` applies either to the
/// teacher's fine-tuning instead (`job` is `distill` or `teacher`). Unset, they change nothing.
pub fn fault_step(name: &str, job: &str) -> Option<usize> {
    let value = std::env::var(name).ok()?;
    let (target, step) = value.split_once(':').unwrap_or(("distill", &value));
    (target == job).then(|| step.parse().ok()).flatten()
}
