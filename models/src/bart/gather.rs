//! Rows of BART's KV caches gathered where they are (issue 20, item 3).
//!
//! Beam search continues new beam `j` from running row `order[j]`, so every step gathers the
//! self-attention cache by parent row, and the cross-attention cache (one row per text from
//! the first decoder run) is expanded to the rows of the texts still running. With the cache
//! bound to the provider's memory ([`Bart::set_bind_cache`](super::Bart::set_bind_cache)) the
//! caches never come to the host, so the gather runs there too: a session built at load time
//! with ort's model editor (`ort::editor`) holds one `Gather(axis = 0)` per cache tensor
//! (`2 × layers`, inputs `cache.{j}`, outputs `gathered.{j}`) and one shared `i64` index input
//! `rows`, on the decoder's provider and options, run through an I/O binding that keeps the
//! gathered tensors in the provider's memory. Only the indices cross the bus.

use ort::editor::{Graph, Model, Node, Opset, ONNX_DOMAIN};
use ort::operator::Attribute;
use ort::value::{Outlet, Shape, SymbolicDimensions, TensorElementType, ValueType};

use super::Cache;
use crate::error::ModelError;
use crate::provider::{ActiveProvider, SessionOptions};
use crate::session::{load_editor_model, tensor_i64, LoadedSession};

/// The name of the gather session in errors and logs.
const NAME: &str = "BART's cache gather (built in code)";

/// A session gathering the rows of `count` cache tensors `[rows, heads, len, head_dim]`.
#[derive(Debug)]
pub(super) struct CacheGather {
    session: LoadedSession,
    count: usize,
}

fn tensor(name: String, element: TensorElementType, shape: &[i64]) -> Outlet {
    Outlet::new(
        name,
        ValueType::Tensor {
            ty: element,
            shape: Shape::new(shape.iter().copied()),
            dimension_symbols: SymbolicDimensions::empty(shape.len()),
        },
    )
}

impl CacheGather {
    /// The session for `count` tensors of `heads` heads of width `head_dim`, on `provider`
    /// (the decoder's) with `options`.
    pub(super) fn new(
        count: usize,
        heads: usize,
        head_dim: usize,
        options: &SessionOptions,
        provider: ActiveProvider,
    ) -> Result<Self, ModelError> {
        let err = |e: ort::Error| ModelError::ort(format!("building {NAME}"), e);
        let kv = [-1, heads as i64, -1, head_dim as i64];
        let mut graph = Graph::new().map_err(err)?;
        let mut inputs = vec![tensor("rows".into(), TensorElementType::Int64, &[-1])];
        let mut outputs = Vec::with_capacity(count);
        for j in 0..count {
            inputs.push(tensor(format!("cache.{j}"), TensorElementType::Float32, &kv));
            outputs.push(tensor(format!("gathered.{j}"), TensorElementType::Float32, &kv));
            let axis = Attribute::new("axis", 0i64).map_err(err)?;
            let node = Node::new(
                "Gather",
                ONNX_DOMAIN,
                format!("gather.{j}"),
                [format!("cache.{j}"), "rows".to_string()],
                [format!("gathered.{j}")],
                [axis],
            )
            .map_err(err)?;
            graph.add_node(node).map_err(err)?;
        }
        graph.set_inputs(inputs).map_err(err)?;
        graph.set_outputs(outputs).map_err(err)?;
        let mut model = Model::new([Opset::new(ONNX_DOMAIN, 17).map_err(err)?]).map_err(err)?;
        model.set_graph(graph).map_err(err)?;
        let session = load_editor_model(NAME, model, options, provider)?;
        Ok(CacheGather { session, count })
    }

    /// `cache` (`count` tensors, any names, kept) with rows `order`: new row `j` is row
    /// `order[j]` of each tensor; the names stay, the tensors stay in the provider's memory.
    pub(super) fn gather(&mut self, cache: &Cache, order: &[usize]) -> Result<Cache, ModelError> {
        if cache.len() != self.count {
            return Err(ModelError::Invalid(format!(
                "{NAME} takes {} cache tensors, got {}",
                self.count,
                cache.len()
            )));
        }
        let rows = tensor_i64(&[order.len()], order.iter().map(|&o| o as i64).collect())?;
        let mut inputs = Vec::with_capacity(self.count + 1);
        inputs.push(("rows".to_string(), &rows));
        for (j, (_, value)) in cache.iter().enumerate() {
            inputs.push((format!("cache.{j}"), value));
        }
        let names: Vec<String> = (0..self.count).map(|j| format!("gathered.{j}")).collect();
        let keep: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut out = self.session.run_bound(inputs, &keep)?;
        cache
            .iter()
            .zip(&names)
            .map(|((name, _), out_name)| Ok((name.clone(), out.take(out_name)?)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::{tensor_f32, view_f32};

    /// The session's gather is the host reorder of `bart.rs` (`reorder`), value for value, on
    /// tensors of different lengths, with rows repeated, dropped and reordered.
    #[test]
    fn the_gather_session_gives_the_host_reorder() -> Result<(), ModelError> {
        if let Err(e) = crate::runtime::runtime() {
            assert!(!crate::assets::assets_required(), "{e} (DATAFLOW_REQUIRE_ASSETS=1)");
            println!("skipped the_gather_session_gives_the_host_reorder: {e}");
            return Ok(());
        }
        let (heads, head_dim, rows) = (3, 2, 5);
        let mut gather = CacheGather::new(4, heads, head_dim, &SessionOptions::cpu(), ActiveProvider::Cpu)?;
        let cache: Cache = [1, 1, 7, 7]
            .iter()
            .enumerate()
            .map(|(j, &len)| {
                let n = rows * heads * len * head_dim;
                let data = (0..n).map(|x| (x * 31 + j * 1000) as f32 * 0.25 - 7.0).collect();
                Ok((
                    format!("past_key_values.{j}"),
                    tensor_f32(&[rows, heads, len, head_dim], data)?,
                ))
            })
            .collect::<Result<_, ModelError>>()?;
        for order in [vec![4, 0, 0, 2, 1, 3, 3], vec![2], vec![0, 1, 2, 3, 4]] {
            let host = super::super::reorder(&cache, &order)?;
            let device = gather.gather(&cache, &order)?;
            assert_eq!(device.len(), host.len());
            for ((hn, hv), (dn, dv)) in host.iter().zip(&device) {
                assert_eq!(hn, dn);
                assert_eq!(view_f32(dv, dn)?, view_f32(hv, hn)?, "{hn} gathered by {order:?}");
            }
        }
        let one = vec![(
            "x".to_string(),
            tensor_f32(&[1, heads, 1, head_dim], vec![0.0; heads * head_dim])?,
        )];
        let err = gather.gather(&one, &[0]).unwrap_err().to_string();
        assert!(err.contains("takes 4 cache tensors, got 1"), "{err}");
        Ok(())
    }
}
