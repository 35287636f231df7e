//! Loading models: I/O checks, missing files, running a fixture.

use dataflow_models::error::ModelError;
use dataflow_models::provider::{ActiveProvider, SessionOptions};
use dataflow_models::session::{load_session, ElementType, IoSpec, TensorSpec};

use crate::{fixture, have_runtime};

fn add_spec() -> IoSpec {
    IoSpec::new()
        .input(TensorSpec::f32("x", &[1, 3]))
        .output(TensorSpec::f32("y", &[1, 3]))
}

#[test]
fn add_fixture_runs_and_gives_the_right_numbers() -> Result<(), ModelError> {
    if !have_runtime("add_fixture_runs_and_gives_the_right_numbers") {
        return Ok(());
    }
    let mut session = load_session(fixture("add.onnx"), &SessionOptions::cpu(), &add_spec())?;
    assert_eq!(session.provider(), ActiveProvider::Cpu);
    assert_eq!(session.provider().as_str(), "cpu");
    assert_eq!(session.inputs(), &[TensorSpec::f32("x", &[1, 3])]);
    let out = session.run_f32(&[("x", &[1, 3], &[1.0, 2.0, 3.5])], &["y"])?;
    assert_eq!(out[0].shape, vec![1, 3]);
    assert_eq!(out[0].data, vec![2.0, 4.0, 6.5]);
    Ok(())
}

#[test]
fn dynamic_dimensions_in_the_spec_accept_fixed_ones() -> Result<(), ModelError> {
    if !have_runtime("dynamic_dimensions_in_the_spec_accept_fixed_ones") {
        return Ok(());
    }
    let spec = IoSpec::new()
        .input(TensorSpec::f32("x", &[-1, 3]))
        .output(TensorSpec::f32("y", &[-1, -1]));
    load_session(fixture("add.onnx"), &SessionOptions::cpu(), &spec)?;
    Ok(())
}

#[test]
fn wrong_input_name_names_file_expected_and_actual() {
    if !have_runtime("wrong_input_name_names_file_expected_and_actual") {
        return;
    }
    let spec = IoSpec::new()
        .input(TensorSpec::f32("input", &[1, 3]))
        .output(TensorSpec::f32("y", &[1, 3]));
    let err = load_session(fixture("add.onnx"), &SessionOptions::cpu(), &spec)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("fixtures/add.onnx"), "{err}");
    assert!(err.contains("input `input` is missing"), "{err}");
    assert!(err.contains("input `x` is not one the caller feeds"), "{err}");
    assert!(
        err.contains("expected inputs [input: f32[1, 3]], outputs [y: f32[1, 3]]"),
        "{err}"
    );
    assert!(
        err.contains("the model has inputs [x: f32[1, 3]], outputs [y: f32[1, 3]]"),
        "{err}"
    );
}

#[test]
fn wrong_shape_and_type_name_both_tensors() {
    if !have_runtime("wrong_shape_and_type_name_both_tensors") {
        return;
    }
    let spec = IoSpec::new()
        .input(TensorSpec::f32("x", &[1, 4]))
        .output(TensorSpec::new("y", ElementType::I64, &[1, 3]));
    let err = load_session(fixture("add.onnx"), &SessionOptions::cpu(), &spec);
    let Err(ModelError::IoMismatch {
        path,
        problems,
        expected,
        actual,
    }) = err
    else {
        panic!("expected an I/O mismatch, got {err:?}");
    };
    assert!(path.ends_with("fixtures/add.onnx"));
    assert_eq!(
        problems,
        vec![
            "input `x` has shape [1, 3], expected [1, 4]".to_string(),
            "output `y` has element type f32, expected i64".to_string(),
        ]
    );
    assert_eq!(expected, "inputs [x: f32[1, 4]], outputs [y: i64[1, 3]]");
    assert_eq!(actual, "inputs [x: f32[1, 3]], outputs [y: f32[1, 3]]");
}

#[test]
fn missing_model_names_the_path_and_the_setup_command() {
    // Checked before the runtime is loaded, so this runs without assets too.
    let path = fixture("no-such-model.onnx");
    let err = load_session(&path, &SessionOptions::cpu(), &add_spec())
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains(&path.display().to_string()), "{err}");
    assert!(err.contains("does not exist"), "{err}");
    assert!(err.contains("run `scripts/setup-assets`"), "{err}");
}

#[test]
fn wrong_input_length_is_an_error_not_a_crash() -> Result<(), ModelError> {
    if !have_runtime("wrong_input_length_is_an_error_not_a_crash") {
        return Ok(());
    }
    let mut session = load_session(fixture("add.onnx"), &SessionOptions::cpu(), &add_spec())?;
    let err = session
        .run_f32(&[("x", &[1, 3], &[1.0, 2.0])], &["y"])
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("shape [1, 3] needs 3 values, got 2"), "{err}");
    Ok(())
}
