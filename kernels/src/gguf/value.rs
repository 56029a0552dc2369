//! Metadata values: the `gguf_type` ids (gguf.md §1.2), typed accessors, and the one
//! encoder/decoder both the reader and the writer use.

use std::fmt;

use super::cursor::Cursor;
use super::error::{esc, GgufError, GgufErrorKind};

/// `gguf_type`: the type id stored before every metadata value (and array element type).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum ValueType {
    U8 = 0,
    I8 = 1,
    U16 = 2,
    I16 = 3,
    U32 = 4,
    I32 = 5,
    F32 = 6,
    Bool = 7,
    String = 8,
    Array = 9,
    U64 = 10,
    I64 = 11,
    F64 = 12,
}

impl ValueType {
    pub const ALL: [ValueType; 13] = [
        ValueType::U8,
        ValueType::I8,
        ValueType::U16,
        ValueType::I16,
        ValueType::U32,
        ValueType::I32,
        ValueType::F32,
        ValueType::Bool,
        ValueType::String,
        ValueType::Array,
        ValueType::U64,
        ValueType::I64,
        ValueType::F64,
    ];

    pub fn from_id(id: u32) -> Option<ValueType> {
        ValueType::ALL.get(id as usize).copied()
    }

    pub fn id(self) -> u32 {
        self as u32
    }

    /// Encoded size of one value of a fixed-size type; `None` for strings and arrays.
    pub fn fixed_size(self) -> Option<usize> {
        use ValueType::*;
        match self {
            U8 | I8 | Bool => Some(1),
            U16 | I16 => Some(2),
            U32 | I32 | F32 => Some(4),
            U64 | I64 | F64 => Some(8),
            String | Array => None,
        }
    }

    /// Smallest possible encoding of one value (a string needs at least its u64 length,
    /// an array its element type and count). Used to bound counts before allocating.
    pub fn min_encoded_size(self) -> u64 {
        match self {
            ValueType::String => 8,
            ValueType::Array => 12,
            t => t.fixed_size().unwrap_or(1) as u64,
        }
    }

    pub fn is_integer(self) -> bool {
        use ValueType::*;
        matches!(self, U8 | I8 | U16 | I16 | U32 | I32 | U64 | I64)
    }

    pub fn is_float(self) -> bool {
        matches!(self, ValueType::F32 | ValueType::F64)
    }

    /// Short name as in ggml's `gguf_type_name` (`u32`, `f32`, `str`, `arr`, …).
    pub fn name(self) -> &'static str {
        use ValueType::*;
        match self {
            U8 => "u8",
            I8 => "i8",
            U16 => "u16",
            I16 => "i16",
            U32 => "u32",
            I32 => "i32",
            F32 => "f32",
            Bool => "bool",
            String => "str",
            Array => "arr",
            U64 => "u64",
            I64 => "i64",
            F64 => "f64",
        }
    }
}

impl fmt::Display for ValueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An array value: the element type is stored explicitly so that empty arrays keep it.
///
/// Invariant checked by the writer (and guaranteed by the reader): `elem_type != Array` and
/// every element has type `elem_type`.
#[derive(Clone, Debug, PartialEq)]
pub struct Array {
    pub elem_type: ValueType,
    pub values: Vec<Value>,
}

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Array),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    pub fn value_type(&self) -> ValueType {
        match self {
            Value::U8(_) => ValueType::U8,
            Value::I8(_) => ValueType::I8,
            Value::U16(_) => ValueType::U16,
            Value::I16(_) => ValueType::I16,
            Value::U32(_) => ValueType::U32,
            Value::I32(_) => ValueType::I32,
            Value::F32(_) => ValueType::F32,
            Value::Bool(_) => ValueType::Bool,
            Value::String(_) => ValueType::String,
            Value::Array(_) => ValueType::Array,
            Value::U64(_) => ValueType::U64,
            Value::I64(_) => ValueType::I64,
            Value::F64(_) => ValueType::F64,
        }
    }

    /// An array value (not checked here; [`GgufWriter::add_kv`](super::GgufWriter::add_kv)
    /// rejects element-type mismatches and nested arrays).
    pub fn array(elem_type: ValueType, values: Vec<Value>) -> Value {
        Value::Array(Array { elem_type, values })
    }

    pub fn string_array<S: Into<String>>(items: impl IntoIterator<Item = S>) -> Value {
        Value::array(
            ValueType::String,
            items.into_iter().map(|s| Value::String(s.into())).collect(),
        )
    }

    pub fn f32_array(items: &[f32]) -> Value {
        Value::array(
            ValueType::F32,
            items.iter().map(|&x| Value::F32(x)).collect(),
        )
    }

    pub fn i32_array(items: &[i32]) -> Value {
        Value::array(
            ValueType::I32,
            items.iter().map(|&x| Value::I32(x)).collect(),
        )
    }

    pub fn u32_array(items: &[u32]) -> Value {
        Value::array(
            ValueType::U32,
            items.iter().map(|&x| Value::U32(x)).collect(),
        )
    }

    /// Any integer value (not bool) as u64 if it is non-negative.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any integer value (not bool) as i64 if it fits.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::I8(v) => Some(v.into()),
            Value::I16(v) => Some(v.into()),
            Value::I32(v) => Some(v.into()),
            Value::I64(v) => Some(v),
            Value::U64(v) => i64::try_from(v).ok(),
            _ => self.as_u64().map(|v| v as i64), // u8..u32 always fit
        }
    }

    /// Any integer value that fits in u32.
    pub fn as_u32(&self) -> Option<u32> {
        self.as_u64().and_then(|v| u32::try_from(v).ok())
    }

    /// Any integer value that fits in i32.
    pub fn as_i32(&self) -> Option<i32> {
        self.as_i64().and_then(|v| i32::try_from(v).ok())
    }

    /// Any integer value that fits in usize.
    pub fn as_usize(&self) -> Option<usize> {
        self.as_u64().and_then(|v| usize::try_from(v).ok())
    }

    /// F32, or F64 rounded to f32.
    pub fn as_f32(&self) -> Option<f32> {
        match *self {
            Value::F32(v) => Some(v),
            Value::F64(v) => Some(v as f32),
            _ => None,
        }
    }

    /// F64, or F32 widened.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(&a.values),
            _ => None,
        }
    }

    /// The array with its element type.
    pub fn as_array_value(&self) -> Option<&Array> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    /// An array of strings (an empty array of another element type is `None`).
    pub fn as_string_array(&self) -> Option<Vec<&str>> {
        let a = self.as_array_value()?;
        if a.elem_type != ValueType::String {
            return None;
        }
        a.values.iter().map(Value::as_str).collect()
    }

    /// An array of F32 or F64 values as f32.
    pub fn as_f32_array(&self) -> Option<Vec<f32>> {
        let a = self.as_array_value()?;
        if !a.elem_type.is_float() {
            return None;
        }
        a.values.iter().map(Value::as_f32).collect()
    }

    /// An array of integers that all fit in i32.
    pub fn as_i32_array(&self) -> Option<Vec<i32>> {
        let a = self.as_array_value()?;
        if !a.elem_type.is_integer() {
            return None;
        }
        a.values.iter().map(Value::as_i32).collect()
    }

    /// An array of integers that all fit in u32.
    pub fn as_u32_array(&self) -> Option<Vec<u32>> {
        let a = self.as_array_value()?;
        if !a.elem_type.is_integer() {
            return None;
        }
        a.values.iter().map(Value::as_u32).collect()
    }

    /// Checks what the encoder relies on: no nested arrays, array elements of the declared
    /// type, strings within ggml's 1 GiB limit.
    pub(crate) fn check(&self) -> Result<(), String> {
        let check_string = |s: &str| {
            if s.len() as u64 > super::layout::MAX_STRING_BYTES {
                Err(format!(
                    "string of {} bytes exceeds the 1 GiB limit",
                    s.len()
                ))
            } else {
                Ok(())
            }
        };
        match self {
            Value::String(s) => check_string(s),
            Value::Array(a) => {
                if a.elem_type == ValueType::Array {
                    return Err("arrays of arrays are not supported (ggml rejects them)".into());
                }
                for (i, v) in a.values.iter().enumerate() {
                    if v.value_type() != a.elem_type {
                        return Err(format!(
                            "array of {} has an element of type {} at index {i}",
                            a.elem_type,
                            v.value_type()
                        ));
                    }
                    if let Value::String(s) = v {
                        check_string(s)?;
                    }
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

macro_rules! value_from {
    ($($t:ty => $variant:ident),*) => {$(
        impl From<$t> for Value {
            fn from(v: $t) -> Value {
                Value::$variant(v)
            }
        }
    )*};
}
value_from!(u8 => U8, i8 => I8, u16 => U16, i16 => I16, u32 => U32, i32 => I32, f32 => F32,
    bool => Bool, String => String, u64 => U64, i64 => I64, f64 => F64, Array => Array);

impl From<&str> for Value {
    fn from(v: &str) -> Value {
        Value::String(v.to_owned())
    }
}

// ---- encoding -------------------------------------------------------------------------------

pub(crate) fn encode_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// The value's payload (without its type id). Arrays write element type, count, elements.
/// The value must have passed [`Value::check`].
pub(crate) fn encode_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => out.push(u8::from(*x)),
        Value::String(s) => encode_string(out, s),
        Value::Array(a) => {
            out.extend_from_slice(&a.elem_type.id().to_le_bytes());
            out.extend_from_slice(&(a.values.len() as u64).to_le_bytes());
            for e in &a.values {
                encode_value(out, e);
            }
        }
        Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
    }
}

// ---- decoding -------------------------------------------------------------------------------

/// Reads a type id (`i32` on disk) and maps it to a [`ValueType`].
pub(crate) fn decode_type(
    c: &mut Cursor<'_>,
    what: &dyn Fn() -> String,
) -> Result<ValueType, GgufError> {
    let at = c.pos();
    let id = c.u32(|| format!("type of {}", what()))?;
    ValueType::from_id(id)
        .ok_or_else(|| c.error(GgufErrorKind::UnknownValueType { what: what(), id }, at))
}

/// Most array elements all metadata of one file may hold (the largest real vocabularies have a
/// few hundred thousand entries per array). Each decoded element takes `size_of::<Value>()`
/// bytes, so this bounds the memory a file of valid-looking huge arrays can claim.
pub const MAX_METADATA_ARRAY_ELEMENTS: u64 = 1 << 24;

/// A capacity to reserve for `count` items of `T` when `available` bytes of input remain:
/// never more bytes than the input has, so a lying count cannot make a large allocation
/// (the vector still grows to `count` if that many items actually decode).
pub(crate) fn bounded_capacity<T>(count: u64, available: u64) -> usize {
    let per_item = std::mem::size_of::<T>().max(1) as u64;
    count.min(available / per_item) as usize
}

/// Reads the payload of a value of type `ty` for metadata key `key`. `element_budget` is what
/// remains of [`MAX_METADATA_ARRAY_ELEMENTS`] for the file.
pub(crate) fn decode_value(
    c: &mut Cursor<'_>,
    ty: ValueType,
    key: &str,
    element_budget: &mut u64,
) -> Result<Value, GgufError> {
    if ty != ValueType::Array {
        return decode_scalar(c, ty, &|| format!("value of metadata key '{}'", esc(key)));
    }
    let at = c.pos();
    let elem_type = decode_type(c, &|| {
        format!("array elements of metadata key '{}'", esc(key))
    })?;
    if elem_type == ValueType::Array {
        return Err(c.error(GgufErrorKind::NestedArray(key.to_owned()), at));
    }
    let count_at = c.pos();
    let count = c.u64(|| format!("array length of metadata key '{}'", esc(key)))?;
    // Bound the count by the bytes left before reserving anything.
    let available = c.remaining();
    if count > available / elem_type.min_encoded_size() {
        return Err(c.error(
            GgufErrorKind::CountTooLarge {
                what: format!("array of {elem_type} (metadata key '{}') element", esc(key)),
                count,
                available,
            },
            count_at,
        ));
    }
    if count > *element_budget {
        return Err(c.error(
            GgufErrorKind::Other(format!(
                "metadata key '{}': array of {count} elements exceeds the limit of \
                 {MAX_METADATA_ARRAY_ELEMENTS} array elements per file",
                esc(key)
            )),
            count_at,
        ));
    }
    *element_budget -= count;
    let mut values = Vec::with_capacity(bounded_capacity::<Value>(count, available));
    for i in 0..count {
        values.push(decode_scalar(c, elem_type, &|| {
            format!("element {i} of metadata key '{}'", esc(key))
        })?);
    }
    Ok(Value::Array(Array { elem_type, values }))
}

fn decode_scalar(
    c: &mut Cursor<'_>,
    ty: ValueType,
    what: &dyn Fn() -> String,
) -> Result<Value, GgufError> {
    Ok(match ty {
        ValueType::U8 => Value::U8(c.u8(what)?),
        ValueType::I8 => Value::I8(c.u8(what)? as i8),
        ValueType::U16 => Value::U16(c.u16(what)?),
        ValueType::I16 => Value::I16(c.u16(what)? as i16),
        ValueType::U32 => Value::U32(c.u32(what)?),
        ValueType::I32 => Value::I32(c.u32(what)? as i32),
        ValueType::F32 => Value::F32(f32::from_bits(c.u32(what)?)),
        // ggml treats any non-zero byte as true.
        ValueType::Bool => Value::Bool(c.u8(what)? != 0),
        ValueType::String => Value::String(c.string(what)?),
        ValueType::U64 => Value::U64(c.u64(what)?),
        ValueType::I64 => Value::I64(c.u64(what)? as i64),
        ValueType::F64 => Value::F64(f64::from_bits(c.u64(what)?)),
        // Only reachable for array elements, which `decode_value` has already rejected.
        ValueType::Array => {
            return Err(c.error(
                GgufErrorKind::Other(format!("{}: nested arrays are not supported", what())),
                c.pos(),
            ))
        }
    })
}
