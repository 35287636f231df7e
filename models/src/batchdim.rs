//! Opening the batch dimension of an export that fixed it to 1.
//!
//! Some exports (the ISNet of the set-up's assets, FCN exported before its script named
//! the batch axis) declare `[1, ...]` inputs and outputs although every operator of the
//! graph works on any batch. ONNX Runtime refuses a batch of 2 against a declared 1, so
//! [`open_batch_dim`] rewrites the model's bytes: dimension 0 of every graph input and
//! output that is the constant 1 becomes the symbol `batch`, and the graph's intermediate
//! shape hints (`value_info`, optional in ONNX) are dropped so none contradicts it. The
//! weights are copied byte for byte. A graph with a hard-coded batch inside (a `Reshape`
//! to `[1, ...]`, as the CenterNet detector has) still fails at a batch above 1; callers
//! only open exports whose batched outputs they test against unbatched ones.
//!
//! The rewrite reads the protobuf wire format directly (no ONNX schema crate): only the
//! fields on the path `ModelProto.graph → GraphProto.{input, output, value_info} →
//! ValueInfoProto.type → TypeProto.tensor_type → Tensor.shape → TensorShapeProto.dim`
//! are decoded; everything else is copied as it is.

/// `ModelProto.graph`.
const MODEL_GRAPH: u64 = 7;
/// `GraphProto.input`, `.output`, `.value_info`.
const GRAPH_INPUT: u64 = 11;
const GRAPH_OUTPUT: u64 = 12;
const GRAPH_VALUE_INFO: u64 = 13;
/// `ValueInfoProto.type`.
const VALUE_INFO_TYPE: u64 = 2;
/// `TypeProto.tensor_type`.
const TYPE_TENSOR: u64 = 1;
/// `TypeProto.Tensor.shape`.
const TENSOR_SHAPE: u64 = 2;
/// `TensorShapeProto.dim`.
const SHAPE_DIM: u64 = 1;
/// `Dimension.dim_value` (varint) and `.dim_param` (string).
const DIM_VALUE: u64 = 1;
const DIM_PARAM: u64 = 2;

/// The symbol written for an opened batch dimension.
pub const BATCH_SYMBOL: &str = "batch";

/// One field of a message: number, wire type and where its bytes lie.
struct Field<'a> {
    number: u64,
    wire: u8,
    /// The whole field, key included (copied as it is when not rewritten).
    raw: &'a [u8],
    /// The payload of a length-delimited field (empty otherwise).
    body: &'a [u8],
    /// The value of a varint field.
    varint: u64,
}

fn read_varint(bytes: &[u8], pos: &mut usize) -> Result<u64, String> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *bytes.get(*pos).ok_or("truncated varint")?;
        *pos += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err("varint longer than 10 bytes".into())
}

fn write_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// The fields of one message, in order.
fn fields(bytes: &[u8]) -> Result<Vec<Field<'_>>, String> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        let start = pos;
        let key = read_varint(bytes, &mut pos)?;
        let (number, wire) = (key >> 3, (key & 7) as u8);
        let (mut body, mut varint): (&[u8], u64) = (&[], 0);
        match wire {
            0 => varint = read_varint(bytes, &mut pos)?,
            1 => pos += 8,
            5 => pos += 4,
            2 => {
                let len = usize::try_from(read_varint(bytes, &mut pos)?).map_err(|e| e.to_string())?;
                let end = pos
                    .checked_add(len)
                    .filter(|&e| e <= bytes.len())
                    .ok_or("truncated field")?;
                body = &bytes[pos..end];
                pos = end;
            }
            other => return Err(format!("unsupported protobuf wire type {other} (field {number})")),
        }
        if pos > bytes.len() {
            return Err("truncated field".into());
        }
        out.push(Field {
            number,
            wire,
            raw: &bytes[start..pos],
            body,
            varint,
        });
    }
    Ok(out)
}

fn write_message(out: &mut Vec<u8>, number: u64, body: &[u8]) {
    write_varint(out, (number << 3) | 2);
    write_varint(out, body.len() as u64);
    out.extend_from_slice(body);
}

/// What [`rewrite`] does with one field's payload: its new payload, or `None` to drop it.
type Edit<'e> = dyn FnMut(u64, &[u8]) -> Result<Option<Vec<u8>>, String> + 'e;

/// Rebuilds `bytes`, passing each length-delimited field numbered in `numbers` through
/// `edit` (`None` drops the field) and copying every other field.
fn rewrite(bytes: &[u8], numbers: &[u64], edit: &mut Edit<'_>) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(bytes.len());
    for f in fields(bytes)? {
        if f.wire == 2 && numbers.contains(&f.number) {
            if let Some(body) = edit(f.number, f.body)? {
                write_message(&mut out, f.number, &body);
            }
        } else {
            out.extend_from_slice(f.raw);
        }
    }
    Ok(out)
}

/// A `TensorShapeProto` whose first dimension, if the constant 1, is `batch` instead.
fn open_shape(shape: &[u8], changed: &mut bool) -> Result<Vec<u8>, String> {
    let mut first = true;
    rewrite(shape, &[SHAPE_DIM], &mut |_, dim| {
        let is_first = std::mem::replace(&mut first, false);
        let fixed_one = fields(dim)?
            .iter()
            .any(|f| f.number == DIM_VALUE && f.wire == 0 && f.varint == 1);
        if !(is_first && fixed_one) {
            return Ok(Some(dim.to_vec()));
        }
        *changed = true;
        let mut body = Vec::new();
        write_message(&mut body, DIM_PARAM, BATCH_SYMBOL.as_bytes());
        Ok(Some(body))
    })
}

/// A `ValueInfoProto` with its tensor's batch dimension opened.
fn open_value_info(info: &[u8], changed: &mut bool) -> Result<Vec<u8>, String> {
    rewrite(info, &[VALUE_INFO_TYPE], &mut |_, ty| {
        rewrite(ty, &[TYPE_TENSOR], &mut |_, tensor| {
            rewrite(tensor, &[TENSOR_SHAPE], &mut |_, shape| {
                open_shape(shape, changed).map(Some)
            })
            .map(Some)
        })
        .map(Some)
    })
}

/// The model `bytes` with the batch dimension of its graph inputs and outputs opened, or
/// `None` when none was fixed to 1 (the model is used as it is). Errors name what in the
/// bytes is not a protobuf the rewrite understands.
pub fn open_batch_dim(bytes: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let mut changed = false;
    let model = rewrite(bytes, &[MODEL_GRAPH], &mut |_, graph| {
        let graph = rewrite(
            graph,
            &[GRAPH_INPUT, GRAPH_OUTPUT, GRAPH_VALUE_INFO],
            &mut |number, info| {
                if number == GRAPH_VALUE_INFO {
                    return Ok(None);
                }
                open_value_info(info, &mut changed).map(Some)
            },
        )?;
        Ok(Some(graph))
    })?;
    Ok(changed.then_some(model))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(number: u64, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        write_message(&mut out, number, body);
        out
    }

    fn dim_value(v: u64) -> Vec<u8> {
        let mut d = vec![0x08];
        write_varint(&mut d, v);
        message(SHAPE_DIM, &d)
    }

    /// A `ValueInfoProto` named `name` with dims `dims`.
    fn value_info(name: &str, dims: &[u64]) -> Vec<u8> {
        let shape: Vec<u8> = dims.iter().flat_map(|&d| dim_value(d)).collect();
        let tensor = [vec![0x08, 0x01], message(TENSOR_SHAPE, &shape)].concat();
        let ty = message(TYPE_TENSOR, &tensor);
        [message(1, name.as_bytes()), message(VALUE_INFO_TYPE, &ty)].concat()
    }

    #[test]
    fn opens_a_fixed_batch_and_keeps_the_rest() {
        let graph = [
            message(1, b"node bytes stay as they are"),
            message(GRAPH_INPUT, &value_info("x", &[1, 3, 4, 4])),
            message(GRAPH_OUTPUT, &value_info("y", &[1, 1, 4, 4])),
            message(GRAPH_VALUE_INFO, &value_info("hidden", &[1, 8])),
        ]
        .concat();
        let model = [vec![0x08, 0x07], message(MODEL_GRAPH, &graph)].concat();
        let opened = open_batch_dim(&model).unwrap().expect("batch 1 is opened");

        let open_dim = message(SHAPE_DIM, &message(DIM_PARAM, BATCH_SYMBOL.as_bytes()));
        let open_info = |name: &str, rest: &[u64]| {
            let shape: Vec<u8> = [open_dim.clone(), rest.iter().flat_map(|&d| dim_value(d)).collect()].concat();
            let tensor = [vec![0x08, 0x01], message(TENSOR_SHAPE, &shape)].concat();
            [
                message(1, name.as_bytes()),
                message(VALUE_INFO_TYPE, &message(TYPE_TENSOR, &tensor)),
            ]
            .concat()
        };
        let want_graph = [
            message(1, b"node bytes stay as they are"),
            message(GRAPH_INPUT, &open_info("x", &[3, 4, 4])),
            message(GRAPH_OUTPUT, &open_info("y", &[1, 4, 4])),
        ]
        .concat();
        assert_eq!(opened, [vec![0x08, 0x07], message(MODEL_GRAPH, &want_graph)].concat());
        assert_eq!(open_batch_dim(&opened).unwrap(), None, "already open: nothing to do");
    }

    #[test]
    fn a_batch_other_than_one_is_left_alone() {
        let graph = message(GRAPH_INPUT, &value_info("x", &[2, 3]));
        let model = message(MODEL_GRAPH, &graph);
        assert_eq!(open_batch_dim(&model).unwrap(), None);
    }

    #[test]
    fn truncated_bytes_are_an_error() {
        let graph = message(GRAPH_INPUT, &value_info("x", &[1, 3]));
        let model = message(MODEL_GRAPH, &graph);
        let err = open_batch_dim(&model[..model.len() - 3]).unwrap_err();
        assert!(err.contains("truncated"), "{err}");
    }
}
