//! A safe reader for Python pickles as written by `torch.save` (protocols 0-5).
//!
//! The reader is a small stack machine that builds an inert value graph. Nothing is ever
//! imported or executed: `GLOBAL`/`STACK_GLOBAL` only record a `(module, name)` reference, and
//! `REDUCE`/`NEWOBJ`/`INST`/`OBJ` are interpreted only for an allowlist of harmless callables
//! (`collections.OrderedDict`, torch's tensor/parameter rebuild functions, `builtins.set`, ...).
//! Any other call becomes an [`Object::Opaque`] placeholder that records what *would* have been
//! called; callers refuse to use such values as tensors.
//!
//! Mutable containers (lists, dicts, sets) live in an arena and are referenced by [`ObjId`], so
//! memo references share them the way Python does, cycles cannot hang or overflow the stack, and
//! dropping the graph is flat. Every count and length is bounded by the input size before
//! anything is allocated; the reader returns an error instead of panicking on any input.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use crate::checkpoint::DType;

/// Index of an object in a [`Pickle`] arena.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ObjId(u32);

/// A pickled value. Scalars and immutable strings are held inline; everything else is an
/// arena object.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// An integer that does not fit in i64: minimal little-endian two's complement bytes.
    BigInt(Arc<[u8]>),
    Float(f64),
    Str(Arc<str>),
    Bytes(Arc<[u8]>),
    Obj(ObjId),
}

/// A torch storage named by a persistent id `('storage', StorageClass, key, location, numel)`.
#[derive(Clone, Debug, PartialEq)]
pub struct StorageRef {
    /// The storage key: the entry name under `data/` in a zip checkpoint.
    pub key: String,
    /// Element type, from the storage class (`torch.HalfStorage` → F16).
    pub dtype: DType,
    /// The storage class as written (`torch.HalfStorage`), for messages.
    pub class: String,
    /// Device the storage was saved from (`cpu`, `cuda:0`); irrelevant for reading.
    pub location: String,
    /// Number of elements in the storage.
    pub numel: u64,
}

/// A tensor rebuilt by `torch._utils._rebuild_tensor_v2`: a strided view into a storage.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorRef {
    pub storage: StorageRef,
    /// Offset of element 0, in elements.
    pub offset: u64,
    /// PyTorch-order shape.
    pub shape: Vec<usize>,
    /// Strides in elements.
    pub stride: Vec<usize>,
}

/// An object in the arena.
#[derive(Clone, Debug, PartialEq)]
pub enum Object {
    Tuple(Vec<Value>),
    List(Vec<Value>),
    /// Insertion-ordered entries; a repeated key is appended again (later entries win on lookup).
    Dict(Vec<(Value, Value)>),
    Set(Vec<Value>),
    /// A reference to a module attribute (`GLOBAL`). Never resolved or imported.
    Global {
        module: String,
        name: String,
    },
    /// A persistent id that is not a torch storage tuple.
    PersistentId(Value),
    Storage(StorageRef),
    Tensor(TensorRef),
    /// The inert result of a call that was not on the allowlist: records what would have been
    /// called with which arguments, plus any state passed to `BUILD`.
    Opaque {
        module: String,
        name: String,
        args: Value,
        state: Option<Value>,
    },
}

/// A parse failure: where in the pickle stream and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PickleError {
    pub offset: usize,
    pub message: String,
}

impl fmt::Display for PickleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pickle error at byte {}: {}", self.offset, self.message)
    }
}

impl std::error::Error for PickleError {}

/// The value graph of one pickle.
#[derive(Clone, Debug, Default)]
pub struct Pickle {
    objects: Vec<Object>,
    root: Option<Value>,
}

/// Hard limits (independent of the input size) on the parser's bookkeeping.
const MAX_MARK_DEPTH: usize = 10_000;
/// Objects, stack entries and memo entries, each (real torch pickles have thousands).
const MAX_ITEMS: usize = 1 << 24;
const MAX_TENSOR_DIMS: usize = 64;
/// Nesting depth walked by [`Pickle::to_json`] and other recursive helpers.
pub const MAX_WALK_DEPTH: usize = 100;
/// Nodes emitted by one [`Pickle::to_json`] call (memo sharing could otherwise blow up a DAG).
const MAX_JSON_NODES: usize = 200_000;

/// Module aliases that protocol < 3 pickles use for Python 2 compatibility.
fn canonical_module(module: &str) -> &str {
    match module {
        "__builtin__" => "builtins",
        "copy_reg" => "copyreg",
        other => other,
    }
}

/// Parse one pickle from the start of `data`. Returns the value graph and the number of bytes
/// consumed (the offset just after `STOP`), so consecutive pickles can be read from one stream.
pub fn parse(data: &[u8]) -> Result<(Pickle, usize), PickleError> {
    let mut machine = Machine {
        data,
        pos: 0,
        pickle: Pickle::default(),
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
    };
    let root = machine.run()?;
    let end = machine.pos;
    let mut pickle = machine.pickle;
    pickle.root = Some(root);
    Ok((pickle, end))
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    pickle: Pickle,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
}

impl<'a> Machine<'a> {
    fn err<T>(&self, message: impl Into<String>) -> Result<T, PickleError> {
        Err(PickleError {
            offset: self.pos,
            message: message.into(),
        })
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], PickleError> {
        let end = match self.pos.checked_add(n) {
            Some(end) if end <= self.data.len() => end,
            _ => {
                return self.err(format!(
                    "truncated: need {n} bytes, {} left",
                    self.data.len() - self.pos.min(self.data.len())
                ))
            }
        };
        let bytes = &self.data[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn u8(&mut self) -> Result<u8, PickleError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, PickleError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, PickleError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, PickleError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    /// A length prefix, checked against the bytes left before anything is allocated.
    fn len_checked(&mut self, len: u64) -> Result<usize, PickleError> {
        let left = (self.data.len() - self.pos) as u64;
        if len > left {
            return self.err(format!("length {len} exceeds the {left} bytes left"));
        }
        Ok(len as usize)
    }

    /// A `\n`-terminated line (text opcodes), without the newline.
    fn line(&mut self) -> Result<&'a [u8], PickleError> {
        let rest = &self.data[self.pos..];
        match rest.iter().position(|&b| b == b'\n') {
            Some(n) => {
                let line = &rest[..n];
                self.pos += n + 1;
                Ok(line)
            }
            None => self.err("truncated: no newline after a text argument"),
        }
    }

    fn line_str(&mut self) -> Result<&'a str, PickleError> {
        let line = self.line()?;
        match std::str::from_utf8(line) {
            Ok(s) => Ok(s),
            Err(_) => self.err("text argument is not UTF-8"),
        }
    }

    fn alloc(&mut self, object: Object) -> Result<Value, PickleError> {
        // The arena grows by at most one object per opcode byte, so it is bounded by the
        // input size; u32 ids are plenty for any pickle we accept.
        let id = match u32::try_from(self.pickle.objects.len()) {
            Ok(id) if (id as usize) < MAX_ITEMS => id,
            _ => return self.err("too many objects"),
        };
        self.pickle.objects.push(object);
        Ok(Value::Obj(ObjId(id)))
    }

    fn push(&mut self, value: Value) -> Result<(), PickleError> {
        if self.stack.len() >= MAX_ITEMS {
            return self.err("stack too deep");
        }
        self.stack.push(value);
        Ok(())
    }

    fn pop(&mut self) -> Result<Value, PickleError> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return self.err("stack underflow");
        }
        match self.stack.pop() {
            Some(v) => Ok(v),
            None => self.err("stack underflow"),
        }
    }

    fn top(&self) -> Result<&Value, PickleError> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return self.err("stack underflow");
        }
        match self.stack.last() {
            Some(v) => Ok(v),
            None => self.err("stack underflow"),
        }
    }

    /// Pop everything above the most recent MARK.
    fn pop_mark(&mut self) -> Result<Vec<Value>, PickleError> {
        let Some(mark) = self.marks.pop() else {
            return self.err("no MARK on the stack");
        };
        if mark > self.stack.len() {
            return self.err("corrupt MARK");
        }
        Ok(self.stack.split_off(mark))
    }

    fn memo_put(&mut self, index: u32) -> Result<(), PickleError> {
        if self.memo.len() >= MAX_ITEMS {
            return self.err("memo too large");
        }
        let value = self.top()?.clone();
        self.memo.insert(index, value);
        Ok(())
    }

    fn memo_get(&mut self, index: u64) -> Result<(), PickleError> {
        let value = match u32::try_from(index).ok().and_then(|i| self.memo.get(&i)) {
            Some(v) => v.clone(),
            None => return self.err(format!("memo key {index} was never stored")),
        };
        self.push(value)?;
        Ok(())
    }

    fn object_mut(&mut self, value: &Value) -> Option<&mut Object> {
        match value {
            Value::Obj(ObjId(id)) => self.pickle.objects.get_mut(*id as usize),
            _ => None,
        }
    }

    fn str_value(&self, bytes: &[u8]) -> Result<Value, PickleError> {
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(Value::Str(Arc::from(s))),
            Err(_) => self.err("string is not valid UTF-8"),
        }
    }

    fn global(&mut self, module: &str, name: &str) -> Result<Value, PickleError> {
        let module = canonical_module(module).to_string();
        self.alloc(Object::Global {
            module,
            name: name.to_string(),
        })
    }

    fn run(&mut self) -> Result<Value, PickleError> {
        loop {
            let op_pos = self.pos;
            let op = self.u8()?;
            match op {
                // --- framing and protocol ---
                0x80 => {
                    let proto = self.u8()?;
                    if proto > 5 {
                        return self.err(format!("unsupported pickle protocol {proto}"));
                    }
                }
                0x95 => {
                    // FRAME: a length hint for buffering; the opcodes follow inline.
                    let len = self.u64()?;
                    self.len_checked(len)?;
                }
                b'.' => {
                    // STOP
                    let value = self.pop()?;
                    return Ok(value);
                }
                // --- stack manipulation ---
                b'(' => {
                    if self.marks.len() >= MAX_MARK_DEPTH {
                        return self.err("MARKs nested too deeply");
                    }
                    self.marks.push(self.stack.len());
                }
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let v = self.top()?.clone();
                    self.push(v)?;
                }
                // --- memo ---
                b'p' => {
                    let line = self.line_str()?;
                    let Ok(index) = line.trim().parse::<u32>() else {
                        return self.err("bad PUT index");
                    };
                    self.memo_put(index)?;
                }
                b'q' => {
                    let index = self.u8()? as u32;
                    self.memo_put(index)?;
                }
                b'r' => {
                    let index = self.u32()?;
                    self.memo_put(index)?;
                }
                0x94 => {
                    // MEMOIZE: store under the next free index.
                    let index = match u32::try_from(self.memo.len()) {
                        Ok(i) => i,
                        Err(_) => return self.err("memo too large"),
                    };
                    self.memo_put(index)?;
                }
                b'g' => {
                    let line = self.line_str()?;
                    let Ok(index) = line.trim().parse::<u64>() else {
                        return self.err("bad GET index");
                    };
                    self.memo_get(index)?;
                }
                b'h' => {
                    let index = self.u8()? as u64;
                    self.memo_get(index)?;
                }
                b'j' => {
                    let index = self.u32()? as u64;
                    self.memo_get(index)?;
                }
                // --- scalars ---
                b'N' => self.push(Value::None)?,
                0x88 => self.push(Value::Bool(true))?,
                0x89 => self.push(Value::Bool(false))?,
                b'J' => {
                    let v = self.u32()? as i32;
                    self.push(Value::Int(v as i64))?;
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push(Value::Int(v as i64))?;
                }
                b'M' => {
                    let v = self.u16()?;
                    self.push(Value::Int(v as i64))?;
                }
                b'I' => {
                    let line = self.line_str()?;
                    let v = match line {
                        "00" => Value::Bool(false),
                        "01" => Value::Bool(true),
                        text => match parse_decimal_int(text) {
                            Some(v) => v,
                            None => return self.err("bad INT literal"),
                        },
                    };
                    self.push(v)?;
                }
                b'L' => {
                    let line = self.line_str()?;
                    let text = line.strip_suffix('L').unwrap_or(line);
                    match parse_decimal_int(text) {
                        Some(v) => self.push(v)?,
                        None => return self.err("bad LONG literal"),
                    }
                }
                0x8a | 0x8b => {
                    // LONG1 / LONG4: little-endian two's complement.
                    let n = if op == 0x8a {
                        self.u8()? as u64
                    } else {
                        self.u32()? as u64
                    };
                    let n = self.len_checked(n)?;
                    let bytes = self.take(n)?;
                    self.push(int_from_le_twos_complement(bytes))?;
                }
                b'F' => {
                    let line = self.line_str()?;
                    let Ok(v) = line.trim().parse::<f64>() else {
                        return self.err("bad FLOAT literal");
                    };
                    self.push(Value::Float(v))?;
                }
                b'G' => {
                    let bits = self.u64()?.swap_bytes(); // BINFLOAT is big-endian
                    self.push(Value::Float(f64::from_bits(bits)))?;
                }
                // --- strings and bytes ---
                b'X' => {
                    let n = self.u32()? as u64;
                    let n = self.len_checked(n)?;
                    let bytes = self.take(n)?;
                    let v = self.str_value(bytes)?;
                    self.push(v)?;
                }
                0x8c => {
                    let n = self.u8()? as u64;
                    let n = self.len_checked(n)?;
                    let bytes = self.take(n)?;
                    let v = self.str_value(bytes)?;
                    self.push(v)?;
                }
                0x8d => {
                    let n = self.u64()?;
                    let n = self.len_checked(n)?;
                    let bytes = self.take(n)?;
                    let v = self.str_value(bytes)?;
                    self.push(v)?;
                }
                b'V' => {
                    let line = self.line()?;
                    match decode_raw_unicode_escape(line) {
                        Some(s) => self.push(Value::Str(Arc::from(s.as_str())))?,
                        None => return self.err("bad UNICODE literal"),
                    }
                }
                b'S' => {
                    let line = self.line()?;
                    match decode_python_string_literal(line) {
                        Some(bytes) => {
                            // Python 3 decodes protocol-0 STRING as ASCII; keep it lossless.
                            let s: String = bytes.iter().map(|&b| b as char).collect();
                            self.push(Value::Str(Arc::from(s.as_str())))?;
                        }
                        None => return self.err("bad STRING literal"),
                    }
                }
                b'T' | b'U' => {
                    // BINSTRING / SHORT_BINSTRING: Python 2 str, decoded as latin-1.
                    let n = if op == b'T' {
                        self.u32()? as u64
                    } else {
                        self.u8()? as u64
                    };
                    let n = self.len_checked(n)?;
                    let bytes = self.take(n)?;
                    let s: String = bytes.iter().map(|&b| b as char).collect();
                    self.push(Value::Str(Arc::from(s.as_str())))?;
                }
                b'B' | b'C' | 0x8e | 0x96 => {
                    // BINBYTES / SHORT_BINBYTES / BINBYTES8 / BYTEARRAY8
                    let n = match op {
                        b'B' => self.u32()? as u64,
                        b'C' => self.u8()? as u64,
                        _ => self.u64()?,
                    };
                    let n = self.len_checked(n)?;
                    let bytes = self.take(n)?;
                    self.push(Value::Bytes(Arc::from(bytes)))?;
                }
                0x97 => return self.err("out-of-band buffers (NEXT_BUFFER) are not supported"),
                0x98 => {
                    // READONLY_BUFFER: no effect on an in-band value.
                    self.top()?;
                }
                // --- containers ---
                b')' => {
                    let v = self.alloc(Object::Tuple(Vec::new()))?;
                    self.push(v)?;
                }
                b't' => {
                    let items = self.pop_mark()?;
                    let v = self.alloc(Object::Tuple(items))?;
                    self.push(v)?;
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    let v = self.alloc(Object::Tuple(items))?;
                    self.push(v)?;
                }
                b']' => {
                    let v = self.alloc(Object::List(Vec::new()))?;
                    self.push(v)?;
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    let v = self.alloc(Object::List(items))?;
                    self.push(v)?;
                }
                b'}' => {
                    let v = self.alloc(Object::Dict(Vec::new()))?;
                    self.push(v)?;
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    if items.len() % 2 != 0 {
                        return self.err("DICT with an odd number of items");
                    }
                    let pairs = pairs_from(items);
                    let v = self.alloc(Object::Dict(pairs))?;
                    self.push(v)?;
                }
                0x8f => {
                    let v = self.alloc(Object::Set(Vec::new()))?;
                    self.push(v)?;
                }
                0x91 => {
                    let items = self.pop_mark()?;
                    let v = self.alloc(Object::Set(items))?;
                    self.push(v)?;
                }
                b'a' => {
                    let item = self.pop()?;
                    let target = self.top()?.clone();
                    self.append(&target, vec![item])?;
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    let target = self.top()?.clone();
                    self.append(&target, items)?;
                }
                b's' => {
                    let value = self.pop()?;
                    let key = self.pop()?;
                    let target = self.top()?.clone();
                    self.set_items(&target, vec![(key, value)])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    if items.len() % 2 != 0 {
                        return self.err("SETITEMS with an odd number of items");
                    }
                    let target = self.top()?.clone();
                    self.set_items(&target, pairs_from(items))?;
                }
                0x90 => {
                    let items = self.pop_mark()?;
                    let target = self.top()?.clone();
                    match self.object_mut(&target) {
                        Some(Object::Set(set)) => set.extend(items),
                        Some(Object::Opaque { .. }) => {}
                        _ => return self.err("ADDITEMS on a non-set"),
                    }
                }
                // --- globals and calls ---
                b'c' => {
                    let module = self.line_str()?;
                    let name = self.line_str()?;
                    let v = self.global(module, name)?;
                    self.push(v)?;
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Value::Str(module), Value::Str(name)) = (module, name) else {
                        return self.err("STACK_GLOBAL needs two strings");
                    };
                    let v = self.global(&module, &name)?;
                    self.push(v)?;
                }
                0x82..=0x84 => {
                    // EXT1/2/4: the copyreg extension registry. Record the code, inertly.
                    let code = match op {
                        0x82 => self.u8()? as u32,
                        0x83 => self.u16()? as u32,
                        _ => self.u32()?,
                    };
                    let v = self.global("copyreg._extension_registry", &code.to_string())?;
                    self.push(v)?;
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let v = self.call(&callable, args)?;
                    self.push(v)?;
                }
                0x81 => {
                    // NEWOBJ: cls.__new__(cls, *args)
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    let v = self.call(&cls, args)?;
                    self.push(v)?;
                }
                0x92 => {
                    // NEWOBJ_EX: cls.__new__(cls, *args, **kwargs); kwargs are not interpreted.
                    let _kwargs = self.pop()?;
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    let v = self.call(&cls, args)?;
                    self.push(v)?;
                }
                b'i' => {
                    // INST module\nname\n with the MARKed items as arguments.
                    let module = self.line_str()?;
                    let name = self.line_str()?;
                    let items = self.pop_mark()?;
                    let cls = self.global(module, name)?;
                    let args = self.alloc(Object::Tuple(items))?;
                    let v = self.call(&cls, args)?;
                    self.push(v)?;
                }
                b'o' => {
                    // OBJ: MARK cls args... OBJ
                    let mut items = self.pop_mark()?;
                    if items.is_empty() {
                        return self.err("OBJ without a class");
                    }
                    let cls = items.remove(0);
                    let args = self.alloc(Object::Tuple(items))?;
                    let v = self.call(&cls, args)?;
                    self.push(v)?;
                }
                b'b' => {
                    let state = self.pop()?;
                    let target = self.top()?.clone();
                    // BUILD only ever attaches state to a placeholder; on dicts (the
                    // `_metadata` attribute of a state dict), tensors and classes it is dropped.
                    if let Some(Object::Opaque { state: slot, .. }) = self.object_mut(&target) {
                        *slot = Some(state);
                    }
                }
                // --- persistent ids ---
                b'P' => {
                    let line = self.line()?;
                    let id = self.str_value(line)?;
                    let v = self.persistent_id(id)?;
                    self.push(v)?;
                }
                b'Q' => {
                    let id = self.pop()?;
                    let v = self.persistent_id(id)?;
                    self.push(v)?;
                }
                other => {
                    self.pos = op_pos;
                    return self.err(format!("unknown opcode 0x{other:02x}"));
                }
            }
        }
    }

    fn append(&mut self, target: &Value, items: Vec<Value>) -> Result<(), PickleError> {
        match self.object_mut(target) {
            Some(Object::List(list)) => {
                list.extend(items);
                Ok(())
            }
            Some(Object::Set(set)) => {
                set.extend(items);
                Ok(())
            }
            // A call result we did not evaluate (a list subclass, say): drop the items.
            Some(Object::Opaque { .. }) => Ok(()),
            _ => self.err("APPEND on a value that is not a list"),
        }
    }

    fn set_items(&mut self, target: &Value, pairs: Vec<(Value, Value)>) -> Result<(), PickleError> {
        match self.object_mut(target) {
            Some(Object::Dict(dict)) => {
                dict.extend(pairs);
                Ok(())
            }
            Some(Object::Opaque { .. }) => Ok(()),
            _ => self.err("SETITEM on a value that is not a dict"),
        }
    }

    fn tuple_items(&self, value: &Value) -> Option<Vec<Value>> {
        match self.pickle.object(value) {
            Some(Object::Tuple(items)) | Some(Object::List(items)) => Some(items.clone()),
            _ => None,
        }
    }

    fn persistent_id(&mut self, id: Value) -> Result<Value, PickleError> {
        // torch: ('storage', StorageClass, key, location, numel[, view_metadata])
        if let Some(items) = self.tuple_items(&id) {
            if items.len() >= 5 && matches!(&items[0], Value::Str(s) if &**s == "storage") {
                let storage = self.storage_ref(&items)?;
                return self.alloc(Object::Storage(storage));
            }
        }
        self.alloc(Object::PersistentId(id))
    }

    fn storage_ref(&self, items: &[Value]) -> Result<StorageRef, PickleError> {
        let class = match self.pickle.object(&items[1]) {
            Some(Object::Global { module, name }) => format!("{module}.{name}"),
            _ => return self.err("storage persistent id without a storage class"),
        };
        let key = match &items[2] {
            Value::Str(s) => s.to_string(),
            Value::Int(i) => i.to_string(),
            _ => return self.err("storage key is not a string"),
        };
        let location = match &items[3] {
            Value::Str(s) => s.to_string(),
            _ => String::new(),
        };
        let numel = match &items[4] {
            Value::Int(n) if *n >= 0 => *n as u64,
            _ => return self.err("storage size is not a non-negative integer"),
        };
        if let Some(view) = items.get(5) {
            if *view != Value::None {
                return self.err("legacy storage views are not supported");
            }
        }
        let dtype = DType::from_torch_storage_class(&class);
        Ok(StorageRef {
            key,
            dtype,
            class,
            location,
            numel,
        })
    }

    /// Interpret a call. Allowlisted callables are evaluated here, in Rust; anything else
    /// yields an inert [`Object::Opaque`].
    fn call(&mut self, callable: &Value, args: Value) -> Result<Value, PickleError> {
        self.call_depth(callable, args, 0)
    }

    fn call_depth(
        &mut self,
        callable: &Value,
        args: Value,
        depth: usize,
    ) -> Result<Value, PickleError> {
        let (module, name) = match self.pickle.object(callable) {
            Some(Object::Global { module, name }) => (module.clone(), name.clone()),
            Some(Object::Opaque { module, name, .. }) => {
                (format!("{module}.{name}(...)"), String::from("<result>"))
            }
            _ => (String::from("<value>"), String::from("<not callable>")),
        };
        let arg_items = self.tuple_items(&args);
        let opaque = |m: &mut Self, args: Value| {
            m.alloc(Object::Opaque {
                module: module.clone(),
                name: name.clone(),
                args,
                state: None,
            })
        };
        match (module.as_str(), name.as_str()) {
            ("collections", "OrderedDict")
            | ("builtins", "dict")
            | ("collections", "defaultdict") => {
                // OrderedDict() / OrderedDict([(k, v), ...]); defaultdict's factory is ignored.
                let mut pairs = Vec::new();
                if module == "collections" && name == "defaultdict" {
                    return self.alloc(Object::Dict(pairs));
                }
                if let Some(items) = &arg_items {
                    if let Some(first) = items.first() {
                        let Some(entries) = self.tuple_items(first) else {
                            return opaque(self, args);
                        };
                        for entry in entries {
                            match self.tuple_items(&entry) {
                                Some(kv) if kv.len() == 2 => {
                                    let mut kv = kv.into_iter();
                                    if let (Some(k), Some(v)) = (kv.next(), kv.next()) {
                                        pairs.push((k, v));
                                    }
                                }
                                _ => return opaque(self, args),
                            }
                        }
                    }
                }
                self.alloc(Object::Dict(pairs))
            }
            ("builtins", "set") | ("builtins", "frozenset") => {
                let items = match arg_items.as_deref() {
                    Some([]) | None => Vec::new(),
                    Some([first, ..]) => match self.pickle.object(first) {
                        Some(Object::Tuple(v)) | Some(Object::List(v)) | Some(Object::Set(v)) => {
                            v.clone()
                        }
                        _ => return opaque(self, args),
                    },
                };
                self.alloc(Object::Set(items))
            }
            ("_codecs", "encode") => {
                // Protocol <3 pickles bytes as _codecs.encode(text, 'latin1').
                match arg_items.as_deref() {
                    Some([Value::Str(text), Value::Str(enc)])
                        if matches!(&**enc, "latin1" | "latin-1" | "iso-8859-1") =>
                    {
                        let mut bytes = Vec::with_capacity(text.len());
                        for c in text.chars() {
                            match u8::try_from(c as u32) {
                                Ok(b) => bytes.push(b),
                                Err(_) => {
                                    return self.err("latin-1 encode of a non-latin-1 character")
                                }
                            }
                        }
                        Ok(Value::Bytes(Arc::from(bytes.as_slice())))
                    }
                    _ => opaque(self, args),
                }
            }
            ("builtins", "bytes") | ("builtins", "bytearray") => match arg_items.as_deref() {
                Some([]) => Ok(Value::Bytes(Arc::from(&[][..]))),
                Some([Value::Bytes(b)]) => Ok(Value::Bytes(b.clone())),
                _ => opaque(self, args),
            },
            ("torch", "Size") => match arg_items.as_deref() {
                Some([dims]) => match self.tuple_items(dims) {
                    Some(items) => self.alloc(Object::Tuple(items)),
                    None => opaque(self, args),
                },
                _ => opaque(self, args),
            },
            ("torch._utils", "_rebuild_tensor_v2") | ("torch._utils", "_rebuild_tensor") => {
                let Some(items) = arg_items else {
                    return self.err("_rebuild_tensor_v2 without an argument tuple");
                };
                let tensor = self.rebuild_tensor(&items)?;
                self.alloc(Object::Tensor(tensor))
            }
            ("torch._utils", "_rebuild_parameter")
            | ("torch._utils", "_rebuild_parameter_with_state") => {
                // Parameter(data, requires_grad, hooks[, state]) is just its data for us.
                match arg_items.as_deref() {
                    Some([data, ..]) => Ok(data.clone()),
                    _ => self.err("_rebuild_parameter without arguments"),
                }
            }
            ("torch._tensor", "_rebuild_from_type_v2")
            | ("torch._tensor", "_rebuild_from_type") => {
                // (func, type, args, state): the tensor is func(*args); type and state only
                // matter for Python subclasses.
                match arg_items.as_deref() {
                    Some([func, _ty, inner_args, ..]) if depth < 2 => {
                        let (func, inner_args) = (func.clone(), inner_args.clone());
                        self.call_depth(&func, inner_args, depth + 1)
                    }
                    _ => opaque(self, args),
                }
            }
            _ => opaque(self, args),
        }
    }

    fn rebuild_tensor(&self, items: &[Value]) -> Result<TensorRef, PickleError> {
        if items.len() < 4 {
            return self.err("_rebuild_tensor_v2 needs (storage, offset, size, stride)");
        }
        let storage = match self.pickle.object(&items[0]) {
            Some(Object::Storage(s)) => s.clone(),
            _ => return self.err("_rebuild_tensor_v2: first argument is not a storage"),
        };
        let offset = match &items[1] {
            Value::Int(n) if *n >= 0 => *n as u64,
            _ => return self.err("_rebuild_tensor_v2: bad storage offset"),
        };
        let shape = self.usize_tuple(&items[2], "size")?;
        let stride = self.usize_tuple(&items[3], "stride")?;
        if shape.len() != stride.len() {
            return self.err("_rebuild_tensor_v2: size and stride differ in length");
        }
        Ok(TensorRef {
            storage,
            offset,
            shape,
            stride,
        })
    }

    fn usize_tuple(&self, value: &Value, what: &str) -> Result<Vec<usize>, PickleError> {
        let Some(items) = self.tuple_items(value) else {
            return self.err(format!("tensor {what} is not a tuple"));
        };
        if items.len() > MAX_TENSOR_DIMS {
            return self.err(format!(
                "tensor {what} has more than {MAX_TENSOR_DIMS} dimensions"
            ));
        }
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            match item {
                Value::Int(n) if n >= 0 && (n as u64) <= usize::MAX as u64 => out.push(n as usize),
                _ => return self.err(format!("tensor {what} has a negative or non-integer entry")),
            }
        }
        Ok(out)
    }
}

fn pairs_from(items: Vec<Value>) -> Vec<(Value, Value)> {
    let mut pairs = Vec::with_capacity(items.len() / 2);
    let mut it = items.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        pairs.push((k, v));
    }
    pairs
}

/// Decimal text (protocol 0 INT/LONG) to an Int or BigInt.
fn parse_decimal_int(text: &str) -> Option<Value> {
    let text = text.trim();
    if let Ok(v) = text.parse::<i64>() {
        return Some(Value::Int(v));
    }
    let (negative, digits) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Magnitude in base 2^32, little-endian limbs.
    let mut limbs: Vec<u32> = vec![0];
    for d in digits.bytes() {
        let mut carry = (d - b'0') as u64;
        for limb in limbs.iter_mut() {
            let v = (*limb as u64) * 10 + carry;
            *limb = v as u32;
            carry = v >> 32;
        }
        if carry > 0 {
            limbs.push(carry as u32);
        }
    }
    let mut bytes: Vec<u8> = limbs.iter().flat_map(|l| l.to_le_bytes()).collect();
    bytes.push(0); // room for the sign bit
    if negative {
        // two's complement: invert and add one
        let mut carry = 1u16;
        for b in bytes.iter_mut() {
            let v = (!*b) as u16 + carry;
            *b = v as u8;
            carry = v >> 8;
        }
    }
    Some(int_from_le_twos_complement(&bytes))
}

/// LONG1/LONG4 payload to an Int (when it fits) or a minimal BigInt.
fn int_from_le_twos_complement(bytes: &[u8]) -> Value {
    if bytes.is_empty() {
        return Value::Int(0);
    }
    let negative = bytes[bytes.len() - 1] & 0x80 != 0;
    let fill = if negative { 0xff } else { 0x00 };
    // Drop redundant sign-extension bytes.
    let mut len = bytes.len();
    while len > 1 && bytes[len - 1] == fill && (bytes[len - 2] & 0x80 != 0) == negative {
        len -= 1;
    }
    let bytes = &bytes[..len];
    if len <= 8 {
        let mut a = [fill; 8];
        a[..len].copy_from_slice(bytes);
        Value::Int(i64::from_le_bytes(a))
    } else {
        Value::BigInt(Arc::from(bytes))
    }
}

/// A BigInt's decimal text.
pub fn bigint_to_decimal(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        return "0".into();
    }
    let negative = bytes[bytes.len() - 1] & 0x80 != 0;
    let mut mag: Vec<u8> = bytes.to_vec();
    if negative {
        let mut carry = 1u16;
        for b in mag.iter_mut() {
            let v = (!*b) as u16 + carry;
            *b = v as u8;
            carry = v >> 8;
        }
    }
    // Repeated division by 10 over big-endian bytes.
    let mut be: Vec<u8> = mag.into_iter().rev().collect();
    let mut digits = Vec::new();
    while be.iter().any(|&b| b != 0) {
        let mut rem = 0u16;
        for b in be.iter_mut() {
            let v = (rem << 8) | *b as u16;
            *b = (v / 10) as u8;
            rem = v % 10;
        }
        digits.push(b'0' + rem as u8);
    }
    if digits.is_empty() {
        digits.push(b'0');
    }
    if negative {
        digits.push(b'-');
    }
    digits.reverse();
    String::from_utf8(digits).unwrap_or_default()
}

/// Python's `raw-unicode-escape` decoding (protocol 0 UNICODE): `\uXXXX`, `\UXXXXXXXX`,
/// other bytes are latin-1.
fn decode_raw_unicode_escape(bytes: &[u8]) -> Option<String> {
    let mut out = String::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 1 < bytes.len()
            && (bytes[i + 1] == b'u' || bytes[i + 1] == b'U')
        {
            let n = if bytes[i + 1] == b'u' { 4 } else { 8 };
            let hex = bytes.get(i + 2..i + 2 + n)?;
            let code = u32::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
            out.push(char::from_u32(code)?);
            i += 2 + n;
        } else {
            out.push(bytes[i] as char);
            i += 1;
        }
    }
    Some(out)
}

/// A quoted Python 2 string literal (protocol 0 STRING), as bytes.
fn decode_python_string_literal(line: &[u8]) -> Option<Vec<u8>> {
    let quote = *line.first()?;
    if !(quote == b'\'' || quote == b'"') || line.len() < 2 || line[line.len() - 1] != quote {
        return None;
    }
    let body = &line[1..line.len() - 1];
    let mut out = Vec::with_capacity(body.len());
    let mut i = 0;
    while i < body.len() {
        let b = body[i];
        if b != b'\\' {
            out.push(b);
            i += 1;
            continue;
        }
        let esc = *body.get(i + 1)?;
        i += 2;
        match esc {
            b'n' => out.push(b'\n'),
            b't' => out.push(b'\t'),
            b'r' => out.push(b'\r'),
            b'0'..=b'7' => {
                let mut v = (esc - b'0') as u32;
                let mut k = 0;
                while k < 2 && i < body.len() && (b'0'..=b'7').contains(&body[i]) {
                    v = v * 8 + (body[i] - b'0') as u32;
                    i += 1;
                    k += 1;
                }
                out.push(u8::try_from(v).ok()?);
            }
            b'x' => {
                let hex = body.get(i..i + 2)?;
                out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
                i += 2;
            }
            other => out.push(other),
        }
    }
    Some(out)
}

impl Pickle {
    /// The value the pickle evaluates to.
    pub fn root(&self) -> &Value {
        self.root.as_ref().unwrap_or(&Value::None)
    }

    /// The arena object behind `value`, if it is one.
    pub fn object(&self, value: &Value) -> Option<&Object> {
        match value {
            Value::Obj(ObjId(id)) => self.objects.get(*id as usize),
            _ => None,
        }
    }

    /// All arena objects (e.g. to collect every storage a pickle references).
    pub fn objects(&self) -> impl Iterator<Item = &Object> {
        self.objects.iter()
    }

    /// Entries of a dict value, in insertion order (duplicates included).
    pub fn dict_entries(&self, value: &Value) -> Option<&[(Value, Value)]> {
        match self.object(value) {
            Some(Object::Dict(entries)) => Some(entries),
            _ => None,
        }
    }

    /// Look up a string key in a dict (the last entry wins, as in Python).
    pub fn dict_get(&self, value: &Value, key: &str) -> Option<&Value> {
        self.dict_entries(value)?
            .iter()
            .rev()
            .find(|(k, _)| matches!(k, Value::Str(s) if &**s == key))
            .map(|(_, v)| v)
    }

    /// Items of a tuple or list value.
    pub fn sequence(&self, value: &Value) -> Option<&[Value]> {
        match self.object(value) {
            Some(Object::Tuple(items)) | Some(Object::List(items)) => Some(items),
            _ => None,
        }
    }

    pub fn as_tensor(&self, value: &Value) -> Option<&TensorRef> {
        match self.object(value) {
            Some(Object::Tensor(t)) => Some(t),
            _ => None,
        }
    }

    /// `module.name` of the call an opaque placeholder stands for.
    pub fn opaque_callable(&self, value: &Value) -> Option<String> {
        match self.object(value) {
            Some(Object::Opaque { module, name, .. }) => Some(format!("{module}.{name}")),
            _ => None,
        }
    }

    /// A short description of a value's kind, for error messages.
    pub fn describe(&self, value: &Value) -> String {
        match value {
            Value::None => "None".into(),
            Value::Bool(_) => "a bool".into(),
            Value::Int(_) | Value::BigInt(_) => "an int".into(),
            Value::Float(_) => "a float".into(),
            Value::Str(_) => "a str".into(),
            Value::Bytes(_) => "bytes".into(),
            Value::Obj(_) => match self.object(value) {
                Some(Object::Tuple(_)) => "a tuple".into(),
                Some(Object::List(_)) => "a list".into(),
                Some(Object::Dict(_)) => "a dict".into(),
                Some(Object::Set(_)) => "a set".into(),
                Some(Object::Global { module, name }) => format!("a reference to {module}.{name}"),
                Some(Object::PersistentId(_)) => "a persistent id".into(),
                Some(Object::Storage(_)) => "a storage".into(),
                Some(Object::Tensor(_)) => "a tensor".into(),
                Some(Object::Opaque { module, name, .. }) => format!("a call to {module}.{name}"),
                None => "a dangling reference".into(),
            },
        }
    }

    /// Convert a value to JSON. Plain values map to JSON directly (dicts whose keys are all
    /// strings become objects); everything else is tagged: `{"$tuple": [..]}`,
    /// `{"$dict": [[k, v], ..]}`, `{"$set": [..]}`, `{"$bytes": [..]}`, `{"$bigint": "123"}`,
    /// `{"$tensor": {..}}`, `{"$global": "m.n"}`, `{"$call": "m.n", "args": .., "state": ..}`.
    /// Depth and total size are bounded; cut-off parts read `{"$truncated": true}`.
    pub fn to_json(&self, value: &Value) -> serde_json::Value {
        let mut budget = MAX_JSON_NODES;
        self.to_json_inner(value, 0, &mut budget)
    }

    fn to_json_inner(&self, value: &Value, depth: usize, budget: &mut usize) -> serde_json::Value {
        use serde_json::{json, Value as J};
        if depth > MAX_WALK_DEPTH || *budget == 0 {
            return json!({"$truncated": true});
        }
        *budget -= 1;
        let list = |items: &[Value], budget: &mut usize| -> J {
            J::Array(
                items
                    .iter()
                    .map(|v| self.to_json_inner(v, depth + 1, budget))
                    .collect(),
            )
        };
        match value {
            Value::None => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Int(i) => json!(i),
            Value::BigInt(b) => json!({"$bigint": bigint_to_decimal(b)}),
            Value::Float(f) => match serde_json::Number::from_f64(*f) {
                Some(n) => J::Number(n),
                None => json!({"$float": f.to_string()}),
            },
            Value::Str(s) => J::String(s.to_string()),
            Value::Bytes(b) => json!({"$bytes": b.to_vec()}),
            Value::Obj(_) => match self.object(value) {
                Some(Object::Tuple(items)) => json!({"$tuple": list(items, budget)}),
                Some(Object::List(items)) => list(items, budget),
                Some(Object::Set(items)) => json!({"$set": list(items, budget)}),
                Some(Object::Dict(entries)) => {
                    if entries.iter().all(|(k, _)| matches!(k, Value::Str(_))) {
                        let mut map = serde_json::Map::new();
                        for (k, v) in entries {
                            if let Value::Str(k) = k {
                                let v = self.to_json_inner(v, depth + 1, budget);
                                map.insert(k.to_string(), v);
                            }
                        }
                        J::Object(map)
                    } else {
                        let pairs = entries
                            .iter()
                            .map(|(k, v)| {
                                J::Array(vec![
                                    self.to_json_inner(k, depth + 1, budget),
                                    self.to_json_inner(v, depth + 1, budget),
                                ])
                            })
                            .collect();
                        json!({"$dict": J::Array(pairs)})
                    }
                }
                Some(Object::Global { module, name }) => {
                    json!({"$global": format!("{module}.{name}")})
                }
                Some(Object::PersistentId(id)) => {
                    json!({"$persistent_id": self.to_json_inner(id, depth + 1, budget)})
                }
                Some(Object::Storage(s)) => {
                    json!({"$storage": s.key, "class": s.class, "numel": s.numel})
                }
                Some(Object::Tensor(t)) => json!({"$tensor": {
                    "dtype": t.storage.dtype.name(),
                    "shape": t.shape,
                    "stride": t.stride,
                    "offset": t.offset,
                    "storage": t.storage.key,
                }}),
                Some(Object::Opaque {
                    module,
                    name,
                    args,
                    state,
                }) => {
                    let args = self.to_json_inner(args, depth + 1, budget);
                    let state = match state {
                        Some(s) => self.to_json_inner(s, depth + 1, budget),
                        None => J::Null,
                    };
                    json!({"$call": format!("{module}.{name}"), "args": args, "state": state})
                }
                None => json!({"$truncated": true}),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_ok(data: &[u8]) -> Pickle {
        let (p, end) = parse(data).expect("parse");
        assert_eq!(end, data.len());
        p
    }

    #[test]
    fn scalars_protocol2() {
        // pickle.dumps((1, -2, 300, 2**40, 1.5, None, True, 'ab'), protocol=2)
        let data = b"\x80\x02(K\x01J\xfe\xff\xff\xffM,\x01\x8a\x06\x00\x00\x00\x00\x00\x01G?\xf8\x00\x00\x00\x00\x00\x00N\x88X\x02\x00\x00\x00abtq\x00.";
        let p = parse_ok(data);
        let items = p.sequence(p.root()).unwrap();
        assert_eq!(
            items,
            &[
                Value::Int(1),
                Value::Int(-2),
                Value::Int(300),
                Value::Int(1 << 40),
                Value::Float(1.5),
                Value::None,
                Value::Bool(true),
                Value::Str(Arc::from("ab")),
            ]
        );
    }

    #[test]
    fn big_ints_round_trip_to_decimal() {
        // LONG1 of 2**80 + 5 = 11 bytes
        let mut bytes = vec![5u8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        let v = int_from_le_twos_complement(&bytes);
        let Value::BigInt(b) = &v else {
            panic!("{v:?}")
        };
        assert_eq!(bigint_to_decimal(b), "1208925819614629174706181");
        // -(2**80 + 5)
        let mut carry = 1u16;
        for b in bytes.iter_mut() {
            let v = (!*b) as u16 + carry;
            *b = v as u8;
            carry = v >> 8;
        }
        bytes.push(0xff);
        let Value::BigInt(b) = int_from_le_twos_complement(&bytes) else {
            panic!()
        };
        assert_eq!(bigint_to_decimal(&b), "-1208925819614629174706181");
        assert_eq!(
            parse_decimal_int("-1208925819614629174706181"),
            Some(Value::BigInt(b))
        );
        assert_eq!(
            parse_decimal_int("-4611686018427387904"),
            Some(Value::Int(-(1 << 62)))
        );
        assert_eq!(int_from_le_twos_complement(&[0xff, 0xff]), Value::Int(-1));
        assert_eq!(int_from_le_twos_complement(&[0x80, 0x00]), Value::Int(128));
    }

    #[test]
    fn memo_shares_mutable_containers() {
        // l = []; pickle.dumps([l, l]) after l is filled: ]q\x00(]q\x01K\x01ah\x01e.
        // Here the inner list is memoized before APPEND, then fetched again.
        let data = b"\x80\x02]q\x00(]q\x01K\x01ah\x01e.";
        let p = parse_ok(data);
        let outer = p.sequence(p.root()).unwrap();
        assert_eq!(outer.len(), 2);
        assert_eq!(outer[0], outer[1]);
        assert_eq!(p.sequence(&outer[1]).unwrap(), &[Value::Int(1)]);
    }

    #[test]
    fn self_referencing_list_does_not_hang() {
        // l = []; l.append(l)
        let data = b"\x80\x02]q\x00h\x00a.";
        let p = parse_ok(data);
        let json = p.to_json(p.root());
        assert!(json.to_string().contains("$truncated"));
    }

    #[test]
    fn non_allowlisted_calls_are_inert() {
        // GLOBAL posix.system, ('echo hi',), REDUCE
        let data = b"\x80\x02cposix\nsystem\nq\x00X\x07\x00\x00\x00echo hiq\x01\x85q\x02Rq\x03.";
        let p = parse_ok(data);
        assert_eq!(p.opaque_callable(p.root()).as_deref(), Some("posix.system"));
        assert_eq!(p.describe(p.root()), "a call to posix.system");
    }

    #[test]
    fn errors_instead_of_panics_on_bad_input() {
        for data in [
            &b""[..],
            b"\x80\x02",
            b"\x80\x02.",                  // STOP on empty stack
            b"\x80\x02h\x05.",             // GET of an unknown memo key
            b"\x80\x02X\xff\xff\xff\xff.", // string longer than the input
            b"\x80\x02e.",                 // APPENDS without MARK
            b"\x80\x02K\x01a.",            // APPEND to an int
            b"\x80\x09.",                  // protocol 9
            b"\x80\x02\xff.",              // unknown opcode
            b"\x80\x02(\x93.",             // STACK_GLOBAL across a mark
        ] {
            assert!(parse(data).is_err(), "{data:?}");
        }
    }

    #[test]
    fn string_literals() {
        assert_eq!(
            decode_python_string_literal(b"'a\\x41\\n\\101'").unwrap(),
            b"aA\nA"
        );
        assert_eq!(
            decode_raw_unicode_escape(b"h\\u00e9\\U00002603").unwrap(),
            "h\u{e9}\u{2603}"
        );
        assert!(decode_python_string_literal(b"'abc").is_none());
    }
}
