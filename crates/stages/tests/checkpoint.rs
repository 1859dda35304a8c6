//! Checkpoint crash recovery on the file system: what a process killed at each point of a save
//! leaves behind, and what the next run makes of it. (Killing a real run mid-write is
//! `tests/run.rs`'s `a_run_stopped_then_aborted_mid_checkpoint_write_resumes_to_the_same_bits`.)
#![allow(clippy::unwrap_used)]

use std::path::Path;

use candle_core::{Device, Tensor};
use distillery_data::Cursor;
use distillery_stages::{CheckpointDir, TrainState};

fn state(step: usize) -> TrainState {
    let cursor = Cursor {
        epoch: 0,
        position: step * 4,
        examples: 40,
        shuffle_seed: Some(9),
    };
    let mut s = TrainState::new(7, vec![("I".into(), 100)], cursor);
    s.global_step = step;
    s.step_in_stage = step;
    s
}

/// One parameter whose value records which save wrote it.
fn params(value: f32) -> Vec<(String, Tensor)> {
    vec![(
        "w".into(),
        Tensor::new(&[value, value + 1.0], &Device::Cpu).unwrap(),
    )]
}

fn value_of(dir: &CheckpointDir, step: usize) -> f32 {
    let (_, path) = dir
        .list()
        .unwrap()
        .into_iter()
        .find(|(s, _)| *s == step)
        .unwrap();
    let c = distillery_stages::checkpoint::load(&path, &Device::Cpu).unwrap();
    assert_eq!(c.state.global_step, step);
    c.params["w"].to_vec1::<f32>().unwrap()[0]
}

fn names(root: &Path) -> Vec<String> {
    let mut n: Vec<String> = std::fs::read_dir(root)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    n.sort();
    n
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn saving_the_same_step_again_swaps_in_the_new_folder_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = CheckpointDir::new(tmp.path(), 3);
    dir.save(&state(5), &params(1.0), &[]).unwrap();
    dir.save(&state(5), &params(2.0), &[]).unwrap();
    assert_eq!(value_of(&dir, 5), 2.0);
    assert_eq!(names(tmp.path()), ["step-00000005"]);
}

#[test]
fn a_save_keeps_the_newest_and_the_best() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = CheckpointDir::new(tmp.path(), 2);
    for step in [5, 10, 15, 20] {
        let mut s = state(step);
        s.best = Some(distillery_stages::Best {
            global_step: 5,
            metric: 0.9,
        });
        dir.save(&s, &params(step as f32), &[]).unwrap();
    }
    let steps: Vec<usize> = dir.list().unwrap().into_iter().map(|(s, _)| s).collect();
    assert_eq!(steps, [5, 15, 20]);
}

#[test]
fn a_partial_temporary_folder_is_never_read_and_is_cleaned_away() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = CheckpointDir::new(tmp.path(), 3);
    dir.save(&state(5), &params(1.0), &[]).unwrap();
    // Killed while writing step 10: its folder has the parameters, not the state.
    let partial = tmp.path().join(".step-00000010.tmp");
    std::fs::create_dir_all(&partial).unwrap();
    std::fs::copy(
        tmp.path().join("step-00000005/params.safetensors"),
        partial.join("params.safetensors"),
    )
    .unwrap();
    // A step folder without state.json (not one of ours, or cut) does not count either.
    std::fs::create_dir_all(tmp.path().join("step-00000012")).unwrap();
    let latest = dir.latest(&Device::Cpu).unwrap().unwrap();
    assert_eq!(latest.state.global_step, 5);
    dir.clean_partial().unwrap();
    assert_eq!(names(tmp.path()), ["step-00000005", "step-00000012"]);
    // Saving step 10 afterwards works, and a stale temporary folder of the same step is
    // replaced rather than mixed in.
    std::fs::create_dir_all(&partial).unwrap();
    std::fs::write(partial.join("junk"), b"x").unwrap();
    dir.save(&state(10), &params(3.0), &[]).unwrap();
    assert_eq!(value_of(&dir, 10), 3.0);
    assert!(!tmp.path().join("step-00000010/junk").exists());
}

#[test]
fn a_re_save_killed_between_its_two_renames_is_put_back() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = CheckpointDir::new(tmp.path(), 3);
    dir.save(&state(5), &params(1.0), &[]).unwrap();
    dir.save(&state(10), &params(2.0), &[]).unwrap();
    // Killed after `step-10` became `.step-10.old` and before the new `.step-10.tmp` was renamed.
    let fin = tmp.path().join("step-00000010");
    let old = tmp.path().join(".step-00000010.old");
    std::fs::rename(&fin, &old).unwrap();
    copy_dir(&old, &tmp.path().join(".step-00000010.tmp"));
    assert_eq!(
        dir.latest(&Device::Cpu).unwrap().unwrap().state.global_step,
        5
    );
    dir.clean_partial().unwrap();
    assert_eq!(names(tmp.path()), ["step-00000005", "step-00000010"]);
    assert_eq!(value_of(&dir, 10), 2.0);
    // Killed after both renames but before the old copy was removed: the old copy goes.
    copy_dir(&fin, &old);
    dir.clean_partial().unwrap();
    assert_eq!(names(tmp.path()), ["step-00000005", "step-00000010"]);
    assert_eq!(
        dir.latest(&Device::Cpu).unwrap().unwrap().state.global_step,
        10
    );
}

#[test]
fn a_damaged_state_file_is_an_error_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = CheckpointDir::new(tmp.path(), 3);
    dir.save(&state(5), &params(1.0), &[]).unwrap();
    let p = tmp.path().join("step-00000005/state.json");
    let text = std::fs::read_to_string(&p).unwrap();
    std::fs::write(&p, &text[..text.len() / 2]).unwrap();
    let err = dir.latest(&Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("state.json"), "{err}");
}
