//! A small pickle virtual machine for the `data.pkl` of a `torch.save` archive: the
//! opcodes torch's pickler emits (protocol 2, plus the few protocol 3-5 ones other
//! picklers use for the same objects), rebuilding dicts, lists, tuples, scalars and
//! tensor references. Tensor data is not touched here: a tensor is a reference to a
//! storage entry of the archive with its offset, shape and strides.
//!
//! Calls of unknown classes become opaque [`Value::Object`]s (their items kept, their
//! attribute state dropped) instead of errors, so checkpoints that also pickle e.g. an
//! `argparse.Namespace` still read; the caller decides what an object means.

use std::collections::HashMap;

use super::TorchDtype;

/// A storage of the archive: `data/<key>`, `numel` elements of `dtype`.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct StorageRef {
    pub key: String,
    pub dtype: TorchDtype,
    pub numel: u64,
}

/// A tensor as `_rebuild_tensor_v2` describes it (offset and strides in elements).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct TensorRef {
    pub storage: StorageRef,
    pub offset: u64,
    pub shape: Vec<u64>,
    pub stride: Vec<u64>,
}

/// An unpickled value.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// An integer beyond i64.
    BigInt,
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    /// Keys in insertion order (dict and `collections.OrderedDict`).
    Dict(Vec<(Value, Value)>),
    /// A global, `module.name`.
    Global(String),
    Storage(StorageRef),
    Tensor(TensorRef),
    /// An instance of `class` that is not rebuilt; dict / list items given to it are kept.
    Object {
        class: String,
        items: Vec<(Value, Value)>,
        elements: Vec<Value>,
    },
    /// A memoised container, in the VM's heap (resolved before the value is returned).
    Ref(usize),
}

/// Runs the pickle program `data` and returns the object it builds.
pub(super) fn unpickle(data: &[u8]) -> Result<Value, String> {
    let mut vm = Vm { data, pos: 0, stack: Vec::new(), marks: Vec::new(), memo: HashMap::new(), heap: Vec::new() };
    loop {
        let at = vm.pos;
        let op = vm.byte().map_err(|_| format!("pickle ends at byte {at} without STOP (truncated)"))?;
        match vm.step(op) {
            Ok(Some(value)) => {
                let mut budget = 10_000_000usize;
                return vm.resolve(value, 0, &mut budget);
            }
            Ok(None) => {}
            Err(e) => return Err(format!("pickle byte {at} (opcode 0x{op:02x}): {e}")),
        }
    }
}

struct Vm<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    heap: Vec<Value>,
}

type Step = Result<Option<Value>, String>;

impl Vm<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len()).ok_or("truncated pickle")?;
        let bytes = &self.data[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }
    fn byte(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn uint(&mut self, n: usize) -> Result<u64, String> {
        Ok(self.take(n)?.iter().rev().fold(0u64, |acc, &b| (acc << 8) | u64::from(b)))
    }
    fn len(&mut self, n: usize) -> Result<usize, String> {
        usize::try_from(self.uint(n)?).map_err(|_| "length too large".to_string())
    }
    fn line(&mut self) -> Result<String, String> {
        let rest = &self.data[self.pos..];
        let end = rest.iter().position(|&b| b == b'\n').ok_or("truncated pickle")?;
        let text = String::from_utf8_lossy(&rest[..end]).into_owned();
        self.pos += end + 1;
        Ok(text)
    }
    fn string(&mut self, n: usize) -> Result<Value, String> {
        let len = self.len(n)?;
        Ok(Value::Str(String::from_utf8_lossy(self.take(len)?).into_owned()))
    }
    fn bytes(&mut self, n: usize) -> Result<Value, String> {
        let len = self.len(n)?;
        Ok(Value::Bytes(self.take(len)?.to_vec()))
    }
    fn pop(&mut self) -> Result<Value, String> {
        self.stack.pop().ok_or_else(|| "pop from an empty stack".to_string())
    }
    fn pop_mark(&mut self) -> Result<Vec<Value>, String> {
        let mark = self.marks.pop().ok_or("no MARK on the stack")?;
        if mark > self.stack.len() {
            return Err("MARK beyond the stack".into());
        }
        Ok(self.stack.split_off(mark))
    }
    /// The top of the stack, through a memo reference.
    fn top_mut(&mut self) -> Result<&mut Value, String> {
        let in_heap = match self.stack.last() {
            None => return Err("empty stack".into()),
            Some(Value::Ref(i)) => Some(*i),
            Some(_) => None,
        };
        match in_heap {
            Some(i) => self.heap.get_mut(i).ok_or_else(|| "dangling memo reference".to_string()),
            None => self.stack.last_mut().ok_or_else(|| "empty stack".to_string()),
        }
    }
    fn put(&mut self, id: u32) -> Result<(), String> {
        let top = self.stack.last_mut().ok_or("memoising from an empty stack")?;
        if matches!(top, Value::Dict(_) | Value::List(_) | Value::Object { .. }) {
            // Mutable containers live in the heap so later SETITEMS reach every reference.
            let value = std::mem::replace(top, Value::Ref(self.heap.len()));
            self.heap.push(value);
        }
        self.memo.insert(id, top_clone(&self.stack));
        Ok(())
    }
    fn push_pairs(&mut self, items: Vec<Value>) -> Result<(), String> {
        let pairs = pairs(items)?;
        match self.top_mut()? {
            Value::Dict(d) | Value::Object { items: d, .. } => d.extend(pairs),
            other => return Err(format!("setting items on {}", kind(other))),
        }
        Ok(())
    }
    fn push_elements(&mut self, items: Vec<Value>) -> Result<(), String> {
        match self.top_mut()? {
            Value::List(l) | Value::Object { elements: l, .. } => l.extend(items),
            other => return Err(format!("appending to {}", kind(other))),
        }
        Ok(())
    }

    fn step(&mut self, op: u8) -> Step {
        let value = match op {
            0x80 => {
                self.byte()?;
                return Ok(None);
            }
            0x95 => {
                self.take(8)?;
                return Ok(None);
            }
            b'.' => return self.pop().map(Some),
            b'(' => {
                self.marks.push(self.stack.len());
                return Ok(None);
            }
            b'}' => Value::Dict(Vec::new()),
            b']' | 0x8f => Value::List(Vec::new()),
            b')' => Value::Tuple(Vec::new()),
            b't' => Value::Tuple(self.pop_mark()?),
            b'l' | 0x91 => Value::List(self.pop_mark()?),
            b'd' => Value::Dict(pairs(self.pop_mark()?)?),
            0x85..=0x87 => {
                let n = usize::from(op - 0x84);
                if self.stack.len() < n {
                    return Err("tuple from a short stack".into());
                }
                Value::Tuple(self.stack.split_off(self.stack.len() - n))
            }
            b'q' | b'r' | 0x94 => {
                let id = match op {
                    b'q' => self.uint(1)?,
                    b'r' => self.uint(4)?,
                    _ => self.memo.len() as u64,
                };
                self.put(id as u32)?;
                return Ok(None);
            }
            b'h' | b'j' => {
                let id = if op == b'h' { self.uint(1)? } else { self.uint(4)? } as u32;
                self.memo.get(&id).cloned().ok_or_else(|| format!("memo entry {id} was never stored"))?
            }
            b'X' => self.string(4)?,
            0x8c => self.string(1)?,
            0x8d => self.string(8)?,
            b'T' => self.string(4)?,
            b'U' => self.string(1)?,
            b'B' => self.bytes(4)?,
            b'C' => self.bytes(1)?,
            0x8e => self.bytes(8)?,
            b'c' => {
                let module = self.line()?;
                let name = self.line()?;
                Value::Global(format!("{module}.{name}"))
            }
            0x93 => match (self.pop()?, self.pop()?) {
                (Value::Str(name), Value::Str(module)) => Value::Global(format!("{module}.{name}")),
                _ => return Err("STACK_GLOBAL without two strings".into()),
            },
            b'Q' => {
                let pid = self.pop()?;
                let pid = self.resolve(pid, 0, &mut 1000)?;
                persistent_load(pid)?
            }
            b'J' => Value::Int(i64::from(i32::from_le_bytes(self.array()?))),
            b'K' => Value::Int(self.uint(1)? as i64),
            b'M' => Value::Int(self.uint(2)? as i64),
            0x8a | 0x8b => {
                let n = if op == 0x8a { self.len(1)? } else { self.len(4)? };
                long(self.take(n)?)
            }
            b'G' => Value::Float(f64::from_be_bytes(self.array()?)),
            b'N' => Value::None,
            0x88 => Value::Bool(true),
            0x89 => Value::Bool(false),
            b'R' => {
                let args = self.pop()?;
                let func = self.pop()?;
                let args = self.resolve(args, 0, &mut 1_000_000)?;
                call(func, args)?
            }
            0x81 | 0x92 => {
                if op == 0x92 {
                    self.pop()?; // kwargs
                }
                self.pop()?; // args
                let class = match self.pop()? {
                    Value::Global(name) => name,
                    other => kind(&other).to_string(),
                };
                Value::Object { class, items: Vec::new(), elements: Vec::new() }
            }
            b'b' => {
                // Attribute state (an OrderedDict's `_metadata`, an object's __dict__): dropped.
                self.pop()?;
                self.top_mut()?;
                return Ok(None);
            }
            b's' => {
                let v = self.pop()?;
                let k = self.pop()?;
                self.push_pairs(vec![k, v])?;
                return Ok(None);
            }
            b'u' => {
                let items = self.pop_mark()?;
                self.push_pairs(items)?;
                return Ok(None);
            }
            b'a' => {
                let v = self.pop()?;
                self.push_elements(vec![v])?;
                return Ok(None);
            }
            b'e' | 0x90 => {
                let items = self.pop_mark()?;
                self.push_elements(items)?;
                return Ok(None);
            }
            b'0' => {
                self.pop()?;
                return Ok(None);
            }
            b'1' => {
                self.pop_mark()?;
                return Ok(None);
            }
            b'2' => top_clone(&self.stack),
            other => return Err(format!("unsupported pickle opcode 0x{other:02x}")),
        };
        self.stack.push(value);
        Ok(None)
    }

    /// `v` with memo references replaced by the containers they name. `budget` bounds
    /// the values copied, so a pickle that shares one container many times over (or a
    /// cycle) is an error rather than a memory blow-up.
    fn resolve(&self, v: Value, depth: usize, budget: &mut usize) -> Result<Value, String> {
        if depth > 200 || *budget == 0 {
            return Err("the pickled object is nested too deeply or shares itself too often".into());
        }
        *budget -= 1;
        Ok(match v {
            Value::Ref(i) => {
                let inner = self.heap.get(i).cloned().ok_or("dangling memo reference")?;
                return self.resolve(inner, depth + 1, budget);
            }
            Value::Tuple(items) => Value::Tuple(self.resolve_all(items, depth, budget)?),
            Value::List(items) => Value::List(self.resolve_all(items, depth, budget)?),
            Value::Dict(pairs) => Value::Dict(self.resolve_pairs(pairs, depth, budget)?),
            Value::Object { class, items, elements } => Value::Object {
                class,
                items: self.resolve_pairs(items, depth, budget)?,
                elements: self.resolve_all(elements, depth, budget)?,
            },
            other => other,
        })
    }

    fn resolve_all(&self, items: Vec<Value>, depth: usize, budget: &mut usize) -> Result<Vec<Value>, String> {
        items.into_iter().map(|x| self.resolve(x, depth + 1, budget)).collect()
    }

    fn resolve_pairs(
        &self,
        pairs: Vec<(Value, Value)>,
        depth: usize,
        budget: &mut usize,
    ) -> Result<Vec<(Value, Value)>, String> {
        pairs
            .into_iter()
            .map(|(k, v)| Ok((self.resolve(k, depth + 1, budget)?, self.resolve(v, depth + 1, budget)?)))
            .collect()
    }
}

/// Flat `[k0, v0, k1, v1, ...]` -> pairs.
fn pairs(items: Vec<Value>) -> Result<Vec<(Value, Value)>, String> {
    if !items.len().is_multiple_of(2) {
        return Err("dict items with an odd number of values".into());
    }
    let mut it = items.into_iter();
    let mut pairs = Vec::new();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        pairs.push((k, v));
    }
    Ok(pairs)
}

fn top_clone(stack: &[Value]) -> Value {
    stack.last().cloned().unwrap_or(Value::None)
}

/// A LONG1 / LONG4 payload: little-endian two's complement.
fn long(bytes: &[u8]) -> Value {
    if bytes.len() > 8 {
        return Value::BigInt;
    }
    let negative = bytes.last().is_some_and(|b| b & 0x80 != 0);
    let mut a = [if negative { 0xFF } else { 0 }; 8];
    a[..bytes.len()].copy_from_slice(bytes);
    Value::Int(i64::from_le_bytes(a))
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::None => "None",
        Value::Bool(_) => "a bool",
        Value::Int(_) | Value::BigInt => "an int",
        Value::Float(_) => "a float",
        Value::Str(_) => "a string",
        Value::Bytes(_) => "bytes",
        Value::Tuple(_) => "a tuple",
        Value::List(_) => "a list",
        Value::Dict(_) => "a dict",
        Value::Global(_) => "a global",
        Value::Storage(_) => "a storage",
        Value::Tensor(_) => "a tensor",
        Value::Object { .. } => "an object",
        Value::Ref(_) => "a reference",
    }
}

/// `('storage', torch.<Type>Storage, key, location, numel)` -> the storage it names.
fn persistent_load(pid: Value) -> Result<Value, String> {
    let Value::Tuple(items) = pid else {
        return Err(format!("persistent id is {}, not a tuple", kind(&pid)));
    };
    match items.as_slice() {
        [Value::Str(tag), Value::Global(class), Value::Str(key), _location, Value::Int(numel)]
            if tag == "storage" && *numel >= 0 =>
        {
            let dtype = TorchDtype::from_storage_class(class)
                .ok_or_else(|| format!("storage type `{class}` is not supported"))?;
            Ok(Value::Storage(StorageRef { key: key.clone(), dtype, numel: *numel as u64 }))
        }
        _ => Err("persistent id is not ('storage', type, key, location, numel)".into()),
    }
}

/// REDUCE: the callables torch's pickler uses; other classes become opaque objects.
fn call(func: Value, args: Value) -> Result<Value, String> {
    let Value::Global(name) = func else {
        return Ok(Value::Object { class: kind(&func).into(), items: Vec::new(), elements: Vec::new() });
    };
    let Value::Tuple(args) = args else {
        return Err(format!("`{name}` called with {}, not a tuple", kind(&args)));
    };
    match name.as_str() {
        "collections.OrderedDict" | "builtins.dict" | "__builtin__.dict" => match args.as_slice() {
            [] => Ok(Value::Dict(Vec::new())),
            [Value::List(pairs)] | [Value::Tuple(pairs)] => pairs
                .iter()
                .map(|p| match p {
                    Value::Tuple(kv) | Value::List(kv) if kv.len() == 2 => Ok((kv[0].clone(), kv[1].clone())),
                    _ => Err(format!("`{name}` item is not a (key, value) pair")),
                })
                .collect::<Result<_, _>>()
                .map(Value::Dict),
            _ => Err(format!("`{name}` called with unexpected arguments")),
        },
        "torch._utils._rebuild_tensor_v2" | "torch._utils._rebuild_tensor" => rebuild_tensor(&args),
        "torch._utils._rebuild_parameter" | "torch._utils._rebuild_parameter_with_state" => match args.first() {
            Some(t @ Value::Tensor(_)) => Ok(t.clone()),
            _ => Err(format!("`{name}` without a tensor")),
        },
        "torch._tensor._rebuild_from_type_v2" => match args.as_slice() {
            [func, _type, inner, ..] => call(func.clone(), inner.clone()),
            _ => Err(format!("`{name}` called with unexpected arguments")),
        },
        other if other.starts_with("torch._utils._rebuild_") => Err(format!(
            "tensors rebuilt by `{other}` (quantized, sparse, nested or device-specific) are not supported; \
             save a dense CPU tensor (e.g. `t.dequantize()`, `t.to_dense()`, `t.cpu()`)"
        )),
        _ => Ok(Value::Object { class: name, items: Vec::new(), elements: Vec::new() }),
    }
}

/// `_rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])`.
fn rebuild_tensor(args: &[Value]) -> Result<Value, String> {
    let ints = |v: &Value| -> Option<Vec<u64>> {
        match v {
            Value::Tuple(items) | Value::List(items) => items
                .iter()
                .map(|x| match x {
                    Value::Int(i) if *i >= 0 => Some(*i as u64),
                    _ => None,
                })
                .collect(),
            _ => None,
        }
    };
    match args {
        [Value::Storage(storage), Value::Int(offset), size, stride, ..] if *offset >= 0 => {
            let (shape, stride) = (ints(size), ints(stride));
            match (shape, stride) {
                (Some(shape), Some(stride)) if shape.len() == stride.len() => {
                    Ok(Value::Tensor(TensorRef { storage: storage.clone(), offset: *offset as u64, shape, stride }))
                }
                _ => Err("tensor size and stride are not equal-length tuples of non-negative ints".into()),
            }
        }
        _ => Err("`_rebuild_tensor_v2` called with unexpected arguments".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalars_containers_and_memo() {
        // {'a': [1, -2, 70000], 'b': (None, True, 1.5), 'c': <the list again>}, with the
        // list memoised before it is filled.
        let mut p = b"\x80\x02}q\x00(X\x01\x00\x00\x00a]q\x01(K\x01J\xfe\xff\xff\xffJ\x70\x11\x01\x00e".to_vec();
        p.extend_from_slice(b"X\x01\x00\x00\x00bN\x88G\x3f\xf8\x00\x00\x00\x00\x00\x00\x87");
        p.extend_from_slice(b"\x8c\x01ch\x01u.");
        let list = Value::List(vec![Value::Int(1), Value::Int(-2), Value::Int(70000)]);
        assert_eq!(
            unpickle(&p).unwrap(),
            Value::Dict(vec![
                (Value::Str("a".into()), list.clone()),
                (Value::Str("b".into()), Value::Tuple(vec![Value::None, Value::Bool(true), Value::Float(1.5)])),
                (Value::Str("c".into()), list),
            ])
        );
    }

    #[test]
    fn longs_and_globals() {
        assert_eq!(long(&[0xff]), Value::Int(-1));
        assert_eq!(long(&[0x00, 0x80]), Value::Int(-32768));
        assert_eq!(long(&[0; 9]), Value::BigInt);
        let p = b"\x80\x02cargparse\nNamespace\nq\x00)\x81q\x01}b.";
        assert!(matches!(unpickle(p).unwrap(), Value::Object { class, .. } if class == "argparse.Namespace"));
    }

    #[test]
    fn malformed_pickles_are_errors() {
        assert!(unpickle(b"\x80\x02}q\x00(").unwrap_err().contains("without STOP"));
        assert!(unpickle(b"\x80\x02u.").unwrap_err().contains("no MARK"));
        assert!(unpickle(b"\x80\x02h\x05.").unwrap_err().contains("memo entry 5"));
        assert!(unpickle(b"\x80\x02\xff.").unwrap_err().contains("unsupported pickle opcode 0xff"));
        assert!(unpickle(b"\x80\x02X\xff\x00\x00\x00ab.").unwrap_err().contains("truncated"));
        let err = unpickle(b"\x80\x02ctorch._utils\n_rebuild_qtensor\n)R.").unwrap_err();
        assert!(err.contains("_rebuild_qtensor") && err.contains("dequantize"), "{err}");
    }
}
