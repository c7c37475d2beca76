//! Checks a checkpoint record against the module it is about to be loaded into, before Burn
//! sees it: Burn panics on a shape mismatch, loads a record with an extra parameter silently, and
//! calls a truncated file a format change. Here the record file (Burn's named MessagePack) is
//! walked without copying its tensor bytes; every tensor's dtype and byte length and every
//! parameter id is checked (Burn trusts the length and panics on a bad id), and every
//! parameter's presence and shape is compared with the module the config builds (optimizer
//! state by parameter id).

use std::collections::BTreeMap;
use std::fmt;

use burn::module::{Module, ModuleVisitor, Param};
use burn::prelude::*;
use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// Parameter paths (`net.encoder.0.conv0.weight`) and shapes.
pub type Shapes = BTreeMap<String, Vec<usize>>;

/// What is wrong with a record, against the module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mismatch {
    /// The file is not a whole MessagePack record (truncated or damaged).
    Corrupt(String),
    /// A parameter of the module is not in the record.
    Missing { path: String, shape: Vec<usize> },
    /// The record holds a parameter the module does not have.
    Unexpected { path: String, shape: Vec<usize> },
    /// The same parameter with other shapes.
    Shape { path: String, record: Vec<usize>, module: Vec<usize> },
    /// Optimizer state for a parameter id the module does not have.
    ForeignState { path: String, shape: Vec<usize> },
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mismatch::Corrupt(reason) => write!(f, "the file is corrupt (truncated or damaged): {reason}"),
            Mismatch::Missing { path, shape } => write!(f, "parameter `{path}` {shape:?} of the model the config builds is not in the checkpoint"),
            Mismatch::Unexpected { path, shape } => write!(f, "the checkpoint holds parameter `{path}` {shape:?}, which the model the config builds does not have"),
            Mismatch::Shape { path, record, module } => {
                write!(f, "parameter `{path}` has shape {record:?} in the checkpoint and {module:?} in the model the config builds")
            }
            Mismatch::ForeignState { path, shape } => {
                write!(f, "the checkpoint holds optimizer state `{path}` {shape:?} for a parameter the model does not have (was the optimizer saved with another model?)")
            }
        }
    }
}

/// Compares the record bytes with `module`; the first mismatch in path order, if any.
pub fn check<B: Backend, M: Module<B>>(record: &[u8], module: &M) -> Result<(), Mismatch> {
    let found = read(record).map_err(Mismatch::Corrupt)?;
    compare(&found.shapes, &module_shapes(module))
}

/// The first difference between a record's parameters and a module's.
pub fn compare(record: &Shapes, module: &Shapes) -> Result<(), Mismatch> {
    let mut paths: Vec<&String> = record.keys().chain(module.keys()).collect();
    paths.sort();
    paths.dedup();
    for path in paths {
        match (record.get(path), module.get(path)) {
            (Some(r), Some(m)) if r != m => return Err(Mismatch::Shape { path: path.clone(), record: r.clone(), module: m.clone() }),
            (None, Some(m)) => return Err(Mismatch::Missing { path: path.clone(), shape: m.clone() }),
            (Some(r), None) => return Err(Mismatch::Unexpected { path: path.clone(), shape: r.clone() }),
            _ => {}
        }
    }
    Ok(())
}

/// Checks optimizer state (tensors under `<parameter id>.…`) against `module`'s parameters:
/// each state tensor must belong to a parameter of the module and have its shape. Parameters
/// without state are fine (Burn creates it at their first update).
pub fn compare_state(state: &Shapes, module: &Parameters) -> Result<(), Mismatch> {
    for (path, shape) in state {
        let id = path.split('.').next().unwrap_or_default();
        match module.by_id.get(id) {
            None => return Err(Mismatch::ForeignState { path: path.clone(), shape: shape.clone() }),
            Some((name, expected)) if expected != shape => {
                return Err(Mismatch::Shape { path: format!("{name} (its optimizer state {path})"), record: shape.clone(), module: expected.clone() });
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// A module's float parameters: shapes by dotted path, and (path, shape) by parameter id.
#[derive(Debug, Default)]
pub struct Parameters {
    pub shapes: Shapes,
    pub by_id: BTreeMap<String, (String, Vec<usize>)>,
}

/// Every float parameter of `module` by dotted path.
pub fn module_shapes<B: Backend, M: Module<B>>(module: &M) -> Shapes {
    module_parameters(module).shapes
}

/// Every float parameter of `module`, by dotted path and by id.
pub fn module_parameters<B: Backend, M: Module<B>>(module: &M) -> Parameters {
    // Burn's derive enters every field, parameters included, by name (Vec items by index).
    struct Collect {
        path: Vec<String>,
        found: Parameters,
    }
    impl<B: Backend> ModuleVisitor<B> for Collect {
        fn enter_module(&mut self, name: &str, _container: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let (path, shape) = (self.path.join("."), param.val().dims().to_vec());
            self.found.by_id.insert(param.id.serialize(), (path.clone(), shape.clone()));
            self.found.shapes.insert(path, shape);
        }
    }
    let mut collect = Collect { path: Vec::new(), found: Parameters::default() };
    module.visit(&mut collect);
    collect.found
}

/// What a record file holds, read without its tensor bytes.
#[derive(Debug, Default)]
pub struct RecordSummary {
    /// Every tensor by dotted path under `item` (a parameter's path, not its `param` field).
    pub shapes: Shapes,
}

/// Every tensor of a Burn named-MessagePack record (`{metadata, item}`, parameters as
/// `{id, param: {bytes, shape, dtype}}`) by dotted path under `item`, after checking that each
/// tensor is a float tensor whose byte length fits its shape and each parameter id is one Burn
/// can read: Burn itself trusts the length (an out-of-bounds read on NdArray) and panics on a
/// bad id.
pub fn read(bytes: &[u8]) -> Result<RecordSummary, String> {
    // Reads from the slice itself: a length field past the end is an error, never a huge
    // allocation, and tensor bytes are skipped, not copied.
    let mut deserializer = rmp_serde::Deserializer::from_read_ref(bytes);
    let tree = Node::deserialize_any_node(&mut deserializer).map_err(|e| e.to_string())?;
    let Node::Map(root) = tree else { return Err("the record is not a map".into()) };
    let item = root.into_iter().find(|(k, _)| k == "item").map(|(_, v)| v).ok_or("the record has no `item`")?;
    let mut summary = RecordSummary::default();
    collect(&item, &mut Vec::new(), &mut summary)?;
    Ok(summary)
}

/// The record's tensor shapes by path (see [`read`]).
pub fn record_shapes(bytes: &[u8]) -> Result<Shapes, String> {
    read(bytes).map(|summary| summary.shapes)
}

fn collect(node: &Node, path: &mut Vec<String>, out: &mut RecordSummary) -> Result<(), String> {
    let here = |path: &[String]| if path.is_empty() { "the record".to_string() } else { format!("`{}`", path.join(".")) };
    match node {
        Node::Map(entries) => {
            let get = |key: &str| entries.iter().find(|(k, _)| k == key).map(|(_, v)| v);
            if let (Some(shape), Some(dtype), Some(bytes)) = (get("shape"), get("dtype"), get("bytes")) {
                let Node::Ints(shape) = shape else { return Err(format!("{}: the shape is not a list of sizes", here(path))) };
                check_tensor(shape, dtype, bytes).map_err(|e| format!("{}: {e}", here(path)))?;
                out.shapes.insert(path.join("."), shape.clone());
                return Ok(());
            }
            if let (Some(id), Some(param)) = (get("id"), get("param")) {
                let Node::Str(id) = id else { return Err(format!("{}: the parameter id is not a string", here(path))) };
                check_id(id).map_err(|e| format!("{}: {e}", here(path)))?;
                // The parameter's tensor is reported at the parameter's path.
                return collect(param, path, out);
            }
            for (key, value) in entries {
                path.push(key.clone());
                collect(value, path, out)?;
                path.pop();
            }
        }
        Node::Seq(items) => {
            for (i, value) in items.iter().enumerate() {
                path.push(i.to_string());
                collect(value, path, out)?;
                path.pop();
            }
        }
        Node::Ints(_) | Node::Str(_) | Node::Bytes(_) | Node::Leaf => {}
    }
    Ok(())
}

/// A float tensor whose byte length is its element count times its element size.
fn check_tensor(shape: &[usize], dtype: &Node, bytes: &Node) -> Result<(), String> {
    let Node::Str(dtype) = dtype else { return Err("the dtype is not a name".into()) };
    let size = match dtype.as_str() {
        "F64" => 8,
        "F32" | "Flex32" => 4,
        "F16" | "BF16" => 2,
        other => return Err(format!("dtype {other} is not a float type")),
    };
    let length = match bytes {
        Node::Bytes(n) => *n,
        Node::Seq(items) => items.len(),
        _ => return Err("the tensor bytes are not a byte string".into()),
    };
    let expected = shape.iter().try_fold(size, |n: usize, &d| n.checked_mul(d)).ok_or("the shape overflows")?;
    if length != expected {
        return Err(format!("{length} bytes for shape {shape:?} of {dtype} (expected {expected})"));
    }
    Ok(())
}

/// An id Burn's `ParamId::deserialize` reads without panicking: base32 of at most 8 bytes
/// (13 characters), or a hyphenated UUID.
fn check_id(id: &str) -> Result<(), String> {
    let readable = (id.len() <= 13 || id.contains('-')) && burn::module::ParamId::try_deserialize(id).is_some();
    if readable { Ok(()) } else { Err(format!("parameter id {id:?} is not a Burn parameter id")) }
}

/// The record's structure, without its tensor bytes.
#[derive(Debug)]
enum Node {
    Map(Vec<(String, Node)>),
    Seq(Vec<Node>),
    /// The sizes under a `shape` key.
    Ints(Vec<usize>),
    Str(String),
    /// A byte string, by length.
    Bytes(usize),
    Leaf,
}

impl Node {
    fn deserialize_any_node<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Node, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }
}

struct NodeSeed;

impl<'de> DeserializeSeed<'de> for NodeSeed {
    type Value = Node;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Node, D::Error> {
        Node::deserialize_any_node(deserializer)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a MessagePack value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Node, E> {
        Ok(Node::Leaf)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Node, E> {
        Ok(Node::Leaf)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Node, E> {
        Ok(Node::Leaf)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Node, E> {
        Ok(Node::Leaf)
    }
    fn visit_str<E>(self, v: &str) -> Result<Node, E> {
        Ok(Node::Str(v.to_string()))
    }
    fn visit_bytes<E>(self, v: &[u8]) -> Result<Node, E> {
        Ok(Node::Bytes(v.len()))
    }
    fn visit_unit<E>(self) -> Result<Node, E> {
        Ok(Node::Leaf)
    }
    fn visit_none<E>(self) -> Result<Node, E> {
        Ok(Node::Leaf)
    }
    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Node, D::Error> {
        Node::deserialize_any_node(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(NodeSeed)? {
            items.push(item);
        }
        Ok(Node::Seq(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<MapKey>()? {
            let value = if key.0 == "shape" { map.next_value::<ShapeOrNode>()?.0 } else { map.next_value_seed(NodeSeed)? };
            entries.push((key.0, value));
        }
        Ok(Node::Map(entries))
    }
}

/// A map key: field names are strings; anything else is kept as its debug text.
struct MapKey(String);

impl<'de> serde::Deserialize<'de> for MapKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = MapKey;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map key")
            }
            fn visit_str<E>(self, v: &str) -> Result<MapKey, E> {
                Ok(MapKey(v.to_string()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<MapKey, E> {
                Ok(MapKey(v.to_string()))
            }
            fn visit_i64<E>(self, v: i64) -> Result<MapKey, E> {
                Ok(MapKey(v.to_string()))
            }
            fn visit_bytes<E>(self, v: &[u8]) -> Result<MapKey, E> {
                Ok(MapKey(String::from_utf8_lossy(v).into_owned()))
            }
        }
        deserializer.deserialize_any(KeyVisitor)
    }
}

/// The value of a `shape` key: a list of sizes, or (not a shape after all) any value.
struct ShapeOrNode(Node);

impl<'de> serde::Deserialize<'de> for ShapeOrNode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ShapeVisitor;
        impl<'de> Visitor<'de> for ShapeVisitor {
            type Value = ShapeOrNode;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a shape")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ShapeOrNode, A::Error> {
                let mut sizes = Vec::new();
                while let Some(size) = seq.next_element::<u64>()? {
                    sizes.push(usize::try_from(size).map_err(|_| serde::de::Error::custom("a size beyond usize"))?);
                }
                Ok(ShapeOrNode(Node::Ints(sizes)))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<ShapeOrNode, A::Error> {
                NodeVisitor.visit_map(map).map(ShapeOrNode)
            }
            fn visit_u64<E>(self, _: u64) -> Result<ShapeOrNode, E> {
                Ok(ShapeOrNode(Node::Leaf))
            }
            fn visit_str<E>(self, _: &str) -> Result<ShapeOrNode, E> {
                Ok(ShapeOrNode(Node::Leaf))
            }
            fn visit_unit<E>(self) -> Result<ShapeOrNode, E> {
                Ok(ShapeOrNode(Node::Leaf))
            }
        }
        deserializer.deserialize_any(ShapeVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TestBackend;
    use burn::nn::{Linear, LinearConfig};
    use burn::record::{FullPrecisionSettings, NamedMpkBytesRecorder, Recorder};

    #[derive(Module, Debug)]
    struct Pair<B: Backend> {
        first: Linear<B>,
        rest: Vec<Linear<B>>,
        extra: Option<Linear<B>>,
    }

    fn pair(width: usize, extra: bool) -> Pair<TestBackend> {
        let device = Default::default();
        Pair {
            first: LinearConfig::new(3, width).init(&device),
            rest: vec![LinearConfig::new(width, 2).init(&device)],
            extra: extra.then(|| LinearConfig::new(2, 2).with_bias(false).init(&device)),
        }
    }

    fn record_bytes(module: Pair<TestBackend>) -> Vec<u8> {
        NamedMpkBytesRecorder::<FullPrecisionSettings>::new().record(module.into_record(), ()).unwrap()
    }

    #[test]
    fn record_and_module_paths_agree() {
        let module = pair(4, true);
        let expected: Shapes = [
            ("first.weight", vec![3, 4]),
            ("first.bias", vec![4]),
            ("rest.0.weight", vec![4, 2]),
            ("rest.0.bias", vec![2]),
            ("extra.weight", vec![2, 2]),
        ]
        .into_iter()
        .map(|(p, s)| (p.to_string(), s))
        .collect();
        assert_eq!(module_shapes(&module), expected);
        assert_eq!(record_shapes(&record_bytes(module.clone())).unwrap(), expected);
        assert_eq!(check(&record_bytes(module.clone()), &module), Ok(()));
    }

    #[test]
    fn every_kind_of_difference_names_the_parameter() {
        let wide = record_bytes(pair(5, true));
        assert_eq!(check(&wide, &pair(4, true)), Err(Mismatch::Shape { path: "first.bias".into(), record: vec![5], module: vec![4] }));
        let without = record_bytes(pair(4, false));
        assert_eq!(check(&without, &pair(4, true)), Err(Mismatch::Missing { path: "extra.weight".into(), shape: vec![2, 2] }));
        let with = record_bytes(pair(4, true));
        assert_eq!(check(&with, &pair(4, false)), Err(Mismatch::Unexpected { path: "extra.weight".into(), shape: vec![2, 2] }));
        assert!(matches!(check(&with[..with.len() - 7], &pair(4, true)), Err(Mismatch::Corrupt(_))));
    }

    /// Replaces the first `from` in `bytes` by `to` (same length).
    fn patched(bytes: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
        let at = bytes.windows(from.len()).position(|w| w == from).unwrap_or_else(|| panic!("{from:?} not in the record"));
        let mut out = bytes.to_vec();
        out[at..at + to.len()].copy_from_slice(to);
        out
    }

    fn corrupt_reason(record: &[u8]) -> String {
        match check(record, &pair(4, true)) {
            Err(Mismatch::Corrupt(reason)) => reason,
            other => panic!("expected a corrupt record, got {other:?}"),
        }
    }

    /// What Burn trusts or panics on: a byte length that does not fit the shape (an
    /// out-of-bounds read), a dtype that is not a float, an id it cannot parse.
    #[test]
    fn lengths_dtypes_and_ids_burn_would_trust_are_checked() {
        let module = pair(4, true);
        let id = module.first.weight.id.serialize();
        let record = record_bytes(module);
        // `first.weight`'s shape [3, 4] claimed as [3, 3]: 48 bytes for 36.
        let reason = corrupt_reason(&patched(&record, b"\xa5shape\x92\x03\x04", b"\xa5shape\x92\x03\x03"));
        assert!(reason.contains("`first.weight`") && reason.contains("48 bytes for shape [3, 3] of F32 (expected 36)"), "{reason}");
        let reason = corrupt_reason(&patched(&record, b"\xa3F32", b"\xa3I32"));
        assert!(reason.contains("dtype I32 is not a float type"), "{reason}");
        let reason = corrupt_reason(&patched(&record, id.as_bytes(), b"zzzzzzzzzzzzz"));
        assert!(reason.contains("`first.weight`") && reason.contains("is not a Burn parameter id"), "{reason}");
        // Burn's own parser panics on base32 of more than 8 bytes; the check refuses it first.
        assert!(check_id("0123456789abcdefghijklmnop").is_err());
        assert!(check_id(&id).is_ok() && check_id("67e55044-10b1-426f-9247-bb680e5fe0c8").is_ok());
    }

    /// Optimizer state is matched to the module's parameters by id.
    #[test]
    fn optimizer_state_must_belong_to_the_modules_parameters() {
        let module = pair(4, true);
        let parameters = module_parameters(&module);
        let id = module.first.weight.id.serialize();
        let state = |id: &str, shape: Vec<usize>| -> Shapes { [(format!("{id}.Rank2.momentum.moment_1"), shape)].into_iter().collect() };
        assert_eq!(compare_state(&state(&id, vec![3, 4]), &parameters), Ok(()));
        assert!(matches!(compare_state(&state(&id, vec![3, 5]), &parameters), Err(Mismatch::Shape { path, .. }) if path.starts_with("first.weight")));
        assert!(matches!(compare_state(&state("0000000000000", vec![3, 4]), &parameters), Err(Mismatch::ForeignState { .. })));
    }
}
