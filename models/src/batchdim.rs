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
//! [`open_batch_inside`] goes further for graphs whose batch 1 is also baked into nodes
//! (the CenterNet detector converted from TF.js, whose TensorFlow graph was frozen at
//! batch 1): every `Reshape` to a constant shape `[1, ...]` gets `[0, ...]` (ONNX: "copy
//! dimension 0 of the input", which is the batch), and each named "batch gather" (TF's
//! `batch_gather` after constant folding: a `Gather` on axis 0 of a tensor flattened to
//! `[rows, ...]` with indices flattened to `[-1]`, the per-image row offsets folded away
//! as 0 because the batch was 1) becomes a `GatherND` with `batch_dims = 1` on the
//! unflattened `[batch, rows, ...]` with `[batch, -1, 1]` indices (cast to int64, which
//! `GatherND` needs). A `Gather` that does not have that shape is an error, not a guess.
//!
//! The rewrite reads the protobuf wire format directly (no ONNX schema crate): only the
//! fields on the path `ModelProto.graph → GraphProto.{input, output, value_info} →
//! ValueInfoProto.type → TypeProto.tensor_type → Tensor.shape → TensorShapeProto.dim`
//! (and, for [`open_batch_inside`], `GraphProto.{node, initializer}`: node names, types,
//! inputs, outputs and attributes; rank-1 int64 initializers) are decoded; everything
//! else is copied as it is.

use std::collections::{HashMap, HashSet};

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

/// `GraphProto.node`, `.initializer`.
const GRAPH_NODE: u64 = 1;
const GRAPH_INITIALIZER: u64 = 5;
/// `NodeProto.input`, `.output`, `.name`, `.op_type`, `.attribute`.
const NODE_INPUT: u64 = 1;
const NODE_OUTPUT: u64 = 2;
const NODE_NAME: u64 = 3;
const NODE_OP_TYPE: u64 = 4;
const NODE_ATTRIBUTE: u64 = 5;
/// `AttributeProto.name`, `.i`, `.type` (`INT` is 2).
const ATTR_NAME: u64 = 1;
const ATTR_I: u64 = 3;
const ATTR_TYPE: u64 = 20;
const ATTR_TYPE_INT: u64 = 2;
/// `TensorProto.dims`, `.data_type` (`INT64` is 7), `.int64_data`, `.name`, `.raw_data`.
const TENSOR_DIMS: u64 = 1;
const TENSOR_DATA_TYPE: u64 = 2;
const TENSOR_INT64_DATA: u64 = 7;
const TENSOR_NAME: u64 = 8;
const TENSOR_RAW_DATA: u64 = 9;
/// `TensorProto.DataType.INT64`.
const INT64: u64 = 7;

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

/// A field's values when it is a repeated varint (packed or not).
fn varints(f: &Field<'_>) -> Result<Vec<u64>, String> {
    match f.wire {
        0 => Ok(vec![f.varint]),
        2 => {
            let (mut pos, mut out) = (0, Vec::new());
            while pos < f.body.len() {
                out.push(read_varint(f.body, &mut pos)?);
            }
            Ok(out)
        }
        w => Err(format!("field {} has wire type {w}, expected a varint", f.number)),
    }
}

fn text(body: &[u8]) -> Result<String, String> {
    String::from_utf8(body.to_vec()).map_err(|e| format!("a name is not UTF-8: {e}"))
}

/// What [`open_batch_inside`] reads of a `NodeProto`.
#[derive(Debug, Default)]
struct Node {
    name: String,
    op: String,
    inputs: Vec<String>,
    outputs: Vec<String>,
    /// Integer attributes (name, value).
    ints: Vec<(String, i64)>,
}

fn parse_node(body: &[u8]) -> Result<Node, String> {
    let mut node = Node::default();
    for f in fields(body)? {
        match (f.number, f.wire) {
            (NODE_INPUT, 2) => node.inputs.push(text(f.body)?),
            (NODE_OUTPUT, 2) => node.outputs.push(text(f.body)?),
            (NODE_NAME, 2) => node.name = text(f.body)?,
            (NODE_OP_TYPE, 2) => node.op = text(f.body)?,
            (NODE_ATTRIBUTE, 2) => {
                let attr = fields(f.body)?;
                let name = attr.iter().find(|a| a.number == ATTR_NAME && a.wire == 2);
                let value = attr.iter().find(|a| a.number == ATTR_I && a.wire == 0);
                if let (Some(name), Some(value)) = (name, value) {
                    node.ints.push((text(name.body)?, value.varint as i64));
                }
            }
            _ => {}
        }
    }
    Ok(node)
}

/// Name and values of a rank-1 int64 `TensorProto` (raw or `int64_data`); `None` for any
/// other tensor.
fn int64_vector(body: &[u8]) -> Result<Option<(String, Vec<i64>)>, String> {
    let (mut name, mut dims, mut int64, mut raw, mut data) = (None, Vec::new(), false, None, Vec::new());
    for f in fields(body)? {
        match f.number {
            TENSOR_DIMS => dims.extend(varints(&f)?),
            TENSOR_DATA_TYPE => int64 = f.wire == 0 && f.varint == INT64,
            TENSOR_NAME if f.wire == 2 => name = Some(text(f.body)?),
            TENSOR_RAW_DATA if f.wire == 2 => raw = Some(f.body),
            TENSOR_INT64_DATA => data.extend(varints(&f)?.into_iter().map(|v| v as i64)),
            _ => {}
        }
    }
    let (Some(name), true, [len]) = (name, int64, dims.as_slice()) else {
        return Ok(None);
    };
    if let Some(raw) = raw {
        data = raw
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap_or_default()))
            .collect();
    }
    Ok((data.len() as u64 == *len).then_some((name, data)))
}

fn write_varint_field(out: &mut Vec<u8>, number: u64, value: u64) {
    write_varint(out, number << 3);
    write_varint(out, value);
}

/// A rank-1 int64 `TensorProto` named `name`.
fn int64_tensor(name: &str, values: &[i64]) -> Vec<u8> {
    let mut out = Vec::new();
    write_varint_field(&mut out, TENSOR_DIMS, values.len() as u64);
    write_varint_field(&mut out, TENSOR_DATA_TYPE, INT64);
    write_message(&mut out, TENSOR_NAME, name.as_bytes());
    let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    write_message(&mut out, TENSOR_RAW_DATA, &raw);
    out
}

/// An `AttributeProto` of type `INT`.
fn int_attribute(name: &str, value: i64) -> Vec<u8> {
    let mut out = Vec::new();
    write_message(&mut out, ATTR_NAME, name.as_bytes());
    write_varint_field(&mut out, ATTR_I, value as u64);
    write_varint_field(&mut out, ATTR_TYPE, ATTR_TYPE_INT);
    out
}

/// A `NodeProto` from its parts.
fn node_bytes(name: &str, op: &str, inputs: &[&str], outputs: &[&str], ints: &[(&str, i64)]) -> Vec<u8> {
    let mut out = Vec::new();
    for i in inputs {
        write_message(&mut out, NODE_INPUT, i.as_bytes());
    }
    for o in outputs {
        write_message(&mut out, NODE_OUTPUT, o.as_bytes());
    }
    write_message(&mut out, NODE_NAME, name.as_bytes());
    write_message(&mut out, NODE_OP_TYPE, op.as_bytes());
    for (n, v) in ints {
        write_message(&mut out, NODE_ATTRIBUTE, &int_attribute(n, *v));
    }
    out
}

/// `node` with input `index` renamed `to` (everything else copied).
fn with_input(node: &[u8], index: usize, to: &str) -> Result<Vec<u8>, String> {
    let mut seen = 0;
    rewrite(node, &[NODE_INPUT], &mut |_, input| {
        seen += 1;
        Ok(Some(if seen == index + 1 {
            to.as_bytes().to_vec()
        } else {
            input.to_vec()
        }))
    })
}

/// What [`open_batch_inside`] changes in a graph.
#[derive(Default)]
struct Plan {
    /// Reshape node → its new constant shape.
    shapes: HashMap<String, Vec<i64>>,
    /// Batch gathers: node name → (data input, int64 indices it reads, the cast's node bytes).
    gathers: HashMap<String, (String, String, Vec<u8>)>,
}

impl Plan {
    /// Plans the batch gathers `names` and the `[1, ...]` reshapes of `nodes`.
    fn new(nodes: &[Node], shapes: &HashMap<String, Vec<i64>>, names: &[&str]) -> Result<Self, String> {
        let producer = |tensor: &str| nodes.iter().find(|n| n.outputs.iter().any(|o| o == tensor));
        let reshape_of = |tensor: &str| -> Option<(&Node, &Vec<i64>)> {
            let n = producer(tensor).filter(|n| n.op == "Reshape" && n.inputs.len() == 2)?;
            Some((n, shapes.get(&n.inputs[1])?))
        };
        let mut plan = Plan::default();
        for &name in names {
            let gather = nodes
                .iter()
                .find(|n| n.name == name)
                .ok_or_else(|| format!("no node named `{name}`"))?;
            let axis = gather.ints.iter().find(|(a, _)| a == "axis").map_or(0, |(_, v)| *v);
            if gather.op != "Gather" || axis != 0 || gather.inputs.len() != 2 {
                return Err(format!(
                    "`{name}` is not a Gather on axis 0 ({} axis {axis})",
                    gather.op
                ));
            }
            let data = reshape_of(&gather.inputs[0]).filter(|(_, s)| s.len() >= 2 && s.iter().all(|&d| d > 0));
            let index = reshape_of(&gather.inputs[1]).filter(|(_, s)| s.as_slice() == [-1]);
            let (Some((data, rows)), Some((index, _))) = (data, index) else {
                return Err(format!(
                    "`{name}` does not gather from a Reshape to a constant [rows, ...] with indices reshaped to [-1]"
                ));
            };
            plan.shapes.insert(data.name.clone(), [&[0][..], rows].concat());
            plan.shapes.insert(index.name.clone(), vec![0, -1, 1]);
            let cast = format!("{name}/indices_int64");
            let cast_node = node_bytes(&cast, "Cast", &[&gather.inputs[1]], &[&cast], &[("to", INT64 as i64)]);
            plan.gathers
                .insert(name.to_string(), (gather.inputs[0].clone(), cast, cast_node));
        }
        for n in nodes.iter().filter(|n| n.op == "Reshape" && n.inputs.len() == 2) {
            match shapes.get(&n.inputs[1]) {
                Some(s) if s.len() >= 2 && s[0] == 1 && !plan.shapes.contains_key(&n.name) => {
                    plan.shapes.insert(n.name.clone(), [&[0][..], &s[1..]].concat());
                }
                _ => {}
            }
        }
        Ok(plan)
    }

    /// Shape initializers rewritten in place (name → values): those read only by planned
    /// Reshapes that all want the same values. The other planned Reshapes get a new
    /// initializer named after the node (node → (initializer, values)).
    #[allow(clippy::type_complexity)]
    fn initializers(&self, nodes: &[Node]) -> (HashMap<String, Vec<i64>>, HashMap<String, (String, Vec<i64>)>) {
        let mut wanted: HashMap<&str, Vec<&Vec<i64>>> = HashMap::new();
        let mut other_use: HashSet<&str> = HashSet::new();
        for n in nodes {
            for (i, input) in n.inputs.iter().enumerate() {
                match self.shapes.get(&n.name) {
                    Some(values) if i == 1 => wanted.entry(input).or_default().push(values),
                    _ => {
                        other_use.insert(input);
                    }
                }
            }
        }
        let mut in_place = HashMap::new();
        let mut fresh = HashMap::new();
        for n in nodes.iter().filter(|n| self.shapes.contains_key(&n.name)) {
            let (init, values) = (n.inputs[1].as_str(), &self.shapes[&n.name]);
            let shared_alike = wanted[init].iter().all(|v| *v == values);
            if shared_alike && !other_use.contains(init) {
                in_place.insert(init.to_string(), values.clone());
            } else {
                fresh.insert(n.name.clone(), (format!("{}/batch_shape", n.name), values.clone()));
            }
        }
        (in_place, fresh)
    }
}

/// The graph `graph` rewritten by `plan`; intermediate shape hints are dropped.
fn apply(graph: &[u8], nodes: &[Node], plan: &Plan) -> Result<Vec<u8>, String> {
    let (in_place, fresh) = plan.initializers(nodes);
    let mut out = Vec::with_capacity(graph.len() + 1024);
    let mut node_at = nodes.iter();
    for f in fields(graph)? {
        match (f.number, f.wire) {
            (GRAPH_NODE, 2) => {
                let node = node_at.next().ok_or("node count changed")?;
                let mut body = f.body.to_vec();
                if let Some((init, _)) = fresh.get(&node.name) {
                    body = with_input(&body, 1, init)?;
                }
                if let Some((data, indices, cast)) = plan.gathers.get(&node.name) {
                    write_message(&mut out, GRAPH_NODE, cast);
                    let outputs: Vec<&str> = node.outputs.iter().map(String::as_str).collect();
                    body = node_bytes(&node.name, "GatherND", &[data, indices], &outputs, &[("batch_dims", 1)]);
                }
                write_message(&mut out, GRAPH_NODE, &body);
            }
            (GRAPH_INITIALIZER, 2) => match int64_vector(f.body)? {
                Some((name, _)) if in_place.contains_key(&name) => {
                    write_message(&mut out, GRAPH_INITIALIZER, &int64_tensor(&name, &in_place[&name]));
                }
                _ => out.extend_from_slice(f.raw),
            },
            (GRAPH_VALUE_INFO, 2) => {}
            _ => out.extend_from_slice(f.raw),
        }
    }
    for (name, values) in fresh.values() {
        write_message(&mut out, GRAPH_INITIALIZER, &int64_tensor(name, values));
    }
    Ok(out)
}

/// The model `bytes` with its batch dimension opened outside ([`open_batch_dim`]) and
/// inside (see the module docs): `Reshape`s to constant `[1, ...]` shapes copy the batch,
/// and each `Gather` named in `batch_gathers` becomes a per-image `GatherND`. Errors name
/// the node that does not have the expected form, or what in the bytes is not a protobuf
/// the rewrite understands.
pub fn open_batch_inside(bytes: &[u8], batch_gathers: &[&str]) -> Result<Vec<u8>, String> {
    let model = open_batch_dim(bytes)?.unwrap_or_else(|| bytes.to_vec());
    let mut found_graph = false;
    let out = rewrite(&model, &[MODEL_GRAPH], &mut |_, graph| {
        found_graph = true;
        let fs = fields(graph)?;
        let nodes = fs
            .iter()
            .filter(|f| f.number == GRAPH_NODE && f.wire == 2)
            .map(|f| parse_node(f.body))
            .collect::<Result<Vec<_>, _>>()?;
        let mut shapes = HashMap::new();
        for f in fs.iter().filter(|f| f.number == GRAPH_INITIALIZER && f.wire == 2) {
            if let Some((name, values)) = int64_vector(f.body)? {
                shapes.insert(name, values);
            }
        }
        let plan = Plan::new(&nodes, &shapes, batch_gathers)?;
        apply(graph, &nodes, &plan).map(Some)
    })?;
    if !found_graph {
        return Err("no graph in the model".into());
    }
    Ok(out)
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

    /// A graph with a `[1, ...]` reshape, a TF-style batch gather (its `[-1]` index shape
    /// shared with an `Unsqueeze`) and a reshape back to `[1, rows, 4]`.
    fn gather_model() -> Vec<u8> {
        let init = |name: &str, v: &[i64]| message(GRAPH_INITIALIZER, &int64_tensor(name, v));
        let node = |name: &str, op: &str, inputs: &[&str], outputs: &[&str], ints: &[(&str, i64)]| {
            message(GRAPH_NODE, &node_bytes(name, op, inputs, outputs, ints))
        };
        let graph = [
            node("se", "Reshape", &["x", "se_shape"], &["y"], &[]),
            node("rows", "Reshape", &["wh", "rows_shape"], &["wh_rows"], &[]),
            node("idx", "Reshape", &["ind", "minus1"], &["ind_flat"], &[]),
            node("u", "Unsqueeze", &["z", "minus1"], &["z1"], &[]),
            node("g", "Gather", &["wh_rows", "ind_flat"], &["gathered"], &[("axis", 0)]),
            node("back", "Reshape", &["gathered", "back_shape"], &["out"], &[]),
            init("se_shape", &[1, 8, 1, 1]),
            init("rows_shape", &[16, 4]),
            init("minus1", &[-1]),
            init("back_shape", &[1, 5, 4]),
            message(GRAPH_INPUT, &value_info("x", &[1, 8])),
            message(GRAPH_OUTPUT, &value_info("out", &[1, 5, 4])),
            message(GRAPH_VALUE_INFO, &value_info("y", &[1, 8, 1, 1])),
        ]
        .concat();
        [vec![0x08, 0x07], message(MODEL_GRAPH, &graph)].concat()
    }

    /// Nodes and int64 initializers of a model's graph.
    fn parts(model: &[u8]) -> (Vec<Node>, HashMap<String, Vec<i64>>, usize) {
        let graph = fields(model)
            .unwrap()
            .into_iter()
            .find(|f| f.number == MODEL_GRAPH)
            .unwrap()
            .body;
        let fs = fields(graph).unwrap();
        let nodes = fs
            .iter()
            .filter(|f| f.number == GRAPH_NODE)
            .map(|f| parse_node(f.body).unwrap())
            .collect();
        let inits = fs
            .iter()
            .filter(|f| f.number == GRAPH_INITIALIZER)
            .filter_map(|f| int64_vector(f.body).unwrap())
            .collect();
        let hints = fs.iter().filter(|f| f.number == GRAPH_VALUE_INFO).count();
        (nodes, inits, hints)
    }

    #[test]
    fn opens_batch_one_reshapes_and_a_batch_gather() {
        let opened = open_batch_inside(&gather_model(), &["g"]).unwrap();
        let (nodes, inits, hints) = parts(&opened);
        assert_eq!(hints, 0, "shape hints are dropped");
        let ops: Vec<(&str, &str)> = nodes.iter().map(|n| (n.name.as_str(), n.op.as_str())).collect();
        assert_eq!(
            ops,
            [
                ("se", "Reshape"),
                ("rows", "Reshape"),
                ("idx", "Reshape"),
                ("u", "Unsqueeze"),
                ("g/indices_int64", "Cast"),
                ("g", "GatherND"),
                ("back", "Reshape")
            ]
        );
        let cast = &nodes[4];
        assert_eq!(
            (cast.inputs.as_slice(), cast.outputs.as_slice()),
            (&["ind_flat".to_string()][..], &["g/indices_int64".to_string()][..])
        );
        assert_eq!(cast.ints, [("to".to_string(), 7)]);
        assert_eq!(nodes[5].inputs, ["wh_rows", "g/indices_int64"]);
        assert_eq!(nodes[5].outputs, ["gathered"]);
        assert_eq!(nodes[5].ints, [("batch_dims".to_string(), 1)]);
        // Shapes read by planned reshapes alone change in place; the shared `[-1]` stays
        // for the `Unsqueeze` and the index reshape reads a new `[0, -1, 1]`.
        assert_eq!(inits["se_shape"], [0, 8, 1, 1]);
        assert_eq!(inits["rows_shape"], [0, 16, 4]);
        assert_eq!(inits["back_shape"], [0, 5, 4]);
        assert_eq!(inits["minus1"], [-1]);
        assert_eq!(nodes[2].inputs, ["ind", "idx/batch_shape"]);
        assert_eq!(inits["idx/batch_shape"], [0, -1, 1]);
        assert_eq!(nodes[3].inputs, ["z", "minus1"]);
    }

    #[test]
    fn a_gather_of_another_form_is_an_error() {
        let model = gather_model();
        let err = open_batch_inside(&model, &["missing"]).unwrap_err();
        assert!(err.contains("no node named `missing`"), "{err}");
        let err = open_batch_inside(&model, &["back"]).unwrap_err();
        assert!(err.contains("`back` is not a Gather on axis 0"), "{err}");
        // Without the batch gather named, only the reshapes open.
        let (nodes, inits, _) = parts(&open_batch_inside(&model, &[]).unwrap());
        assert_eq!(nodes[4].op, "Gather");
        assert_eq!(
            (inits["rows_shape"].as_slice(), inits["back_shape"].as_slice()),
            (&[16, 4][..], &[0, 5, 4][..])
        );
    }
}
