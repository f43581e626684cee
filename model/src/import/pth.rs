//! A reader for PyTorch `.pth` files (zip archive + pickle) that never executes pickle code.
//!
//! The pickle stream is interpreted by a small virtual machine that knows the opcodes
//! `torch.save` emits and resolves `GLOBAL` only against an allow-list: the tensor and
//! storage rebuild functions, `collections.OrderedDict`, and `argparse.Namespace` (kept
//! as an inert object, because official training checkpoints store their arguments).
//! Anything else is refused with an error naming it, the same stance as PyTorch's
//! `weights_only=True` loader.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::{Cursor, Read};
use std::rc::{Rc, Weak};

use crate::error::{ModelError, Result};
use crate::tensors::{RawTensor, TensorMap};

/// Largest memo, stack and total of container items accepted; a DINOv2 training checkpoint
/// with its optimiser state holds a few thousand.
const MAX_ITEMS: usize = 1_000_000;
/// Largest tensor accepted (elements); 4 G elements is beyond any ViT weight.
const MAX_NUMEL: u64 = 1 << 32;
/// Largest `data.pkl`: the pickle names tensors, it does not hold them (an official
/// training checkpoint's is about 100 KB).
const MAX_PICKLE_BYTES: u64 = 64 << 20;
/// Values `flatten` may visit: a memoised container referenced from many places is walked
/// once per path, which a hostile pickle can make exponential.
const MAX_VISITS: usize = 4_000_000;
/// How many tensors may take each stored element: a file may name one tensor twice (a
/// student and a teacher saved as the same objects), but a container referenced again and
/// again must not multiply what reading allocates.
const MAX_USES_PER_ELEMENT: usize = 4;
/// Characters of all tensor names together: real checkpoints use under a megabyte.
const MAX_PATH_CHARS: usize = 64 << 20;

/// What reading a `.pth` may allocate, in bytes.
#[derive(Debug, Clone)]
pub struct PthLimits {
    /// The storages' decompressed bytes, all together.
    pub max_storage_bytes: u64,
    /// The tensors read, in f32, all together (a tensor reached from several places in the
    /// pickle counts each time: the map holds a copy per name), checked before any is read.
    pub max_tensor_bytes: u64,
    /// Why the limits are what they are, for the message of a file above them.
    pub reason: String,
}

impl PthLimits {
    /// Both budgets at `bytes`, set for `reason`.
    pub fn both(bytes: u64, reason: impl Into<String>) -> Self {
        Self {
            max_storage_bytes: bytes,
            max_tensor_bytes: bytes,
            reason: reason.into(),
        }
    }
}

impl PthLimits {
    /// 64 GiB: above the largest official release (a DINOv3 7B: 27 GB in bf16, 54 GB in
    /// f32); callers that know the machine pass less.
    pub fn generous() -> Self {
        Self::both(64 << 30, "")
    }
}

fn err<T>(reason: impl Into<String>) -> Result<T> {
    Err(ModelError::Pth {
        reason: reason.into(),
    })
}

/// Element types of torch storages, from their class names.
#[derive(Debug, Clone, Copy, PartialEq)]
enum StorageDtype {
    F32,
    F16,
    BF16,
    F64,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl StorageDtype {
    fn from_class(name: &str) -> Option<Self> {
        Some(match name {
            "FloatStorage" => Self::F32,
            "HalfStorage" => Self::F16,
            "BFloat16Storage" => Self::BF16,
            "DoubleStorage" => Self::F64,
            "LongStorage" => Self::I64,
            "IntStorage" => Self::I32,
            "ShortStorage" => Self::I16,
            "CharStorage" => Self::I8,
            "ByteStorage" => Self::U8,
            "BoolStorage" => Self::Bool,
            _ => return None,
        })
    }

    fn size(self) -> usize {
        match self {
            Self::F64 | Self::I64 => 8,
            Self::F32 | Self::I32 => 4,
            Self::F16 | Self::BF16 | Self::I16 => 2,
            Self::I8 | Self::U8 | Self::Bool => 1,
        }
    }

    fn read(self, b: &[u8]) -> f32 {
        match self {
            Self::F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            Self::F16 => half::f16::from_le_bytes([b[0], b[1]]).to_f32(),
            Self::BF16 => half::bf16::from_le_bytes([b[0], b[1]]).to_f32(),
            Self::F64 => f64::from_le_bytes(b[..8].try_into().expect("8 bytes")) as f32,
            Self::I64 => i64::from_le_bytes(b[..8].try_into().expect("8 bytes")) as f32,
            Self::I32 => i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32,
            Self::I16 => i16::from_le_bytes([b[0], b[1]]) as f32,
            Self::I8 => b[0] as i8 as f32,
            Self::U8 | Self::Bool => b[0] as f32,
        }
    }
}

/// A reference to one storage file of the archive.
#[derive(Debug, Clone)]
struct StorageRef {
    dtype: StorageDtype,
    key: String,
}

/// A tensor as `_rebuild_tensor_v2` describes it: a strided view of a storage.
#[derive(Debug, Clone)]
struct TensorRef {
    storage: StorageRef,
    offset: usize,
    shape: Vec<usize>,
    stride: Vec<usize>,
}

/// The values our pickle machine can build. Containers are shared, as in Python, so a
/// memoised dict that is filled later is seen filled through every reference.
#[derive(Debug, Clone)]
enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float,
    Str(Rc<str>),
    Bytes,
    Tuple(Rc<Vec<Value>>),
    List(Rc<RefCell<Vec<Value>>>),
    Dict(Rc<RefCell<Vec<(Value, Value)>>>),
    Global(Rc<(String, String)>),
    Storage(Rc<StorageRef>),
    Tensor(Rc<TensorRef>),
    /// An allowed but inert object (argparse.Namespace); its state is kept, never used.
    Object,
    Mark,
}

impl Drop for Value {
    /// Drops nested containers with a worklist: a pickle of a million nested one-element
    /// tuples would otherwise overflow the stack when its value tree is dropped.
    fn drop(&mut self) {
        let mut work = self.take_children();
        while let Some(mut v) = work.pop() {
            work.append(&mut v.take_children());
        }
    }
}

impl Value {
    /// The children this value owns alone (shared containers keep theirs: another holder
    /// drops them later).
    fn take_children(&mut self) -> Vec<Value> {
        match self {
            Value::Tuple(t) => Rc::get_mut(t).map(std::mem::take).unwrap_or_default(),
            Value::List(l) => Rc::get_mut(l)
                .map(|l| std::mem::take(l.get_mut()))
                .unwrap_or_default(),
            Value::Dict(d) => Rc::get_mut(d)
                .map(|d| {
                    std::mem::take(d.get_mut())
                        .into_iter()
                        .flat_map(|(k, v)| [k, v])
                        .collect()
                })
                .unwrap_or_default(),
            _ => Vec::new(),
        }
    }

    fn as_int(&self, what: &str) -> Result<i64> {
        match self {
            Value::Int(i) => Ok(*i),
            Value::Bool(b) => Ok(*b as i64),
            other => err(format!(
                "expected an integer for {what}, found {}",
                other.kind()
            )),
        }
    }

    fn as_usize_list(&self, what: &str) -> Result<Vec<usize>> {
        let items: Vec<Value> = match self {
            Value::Tuple(t) => t.as_ref().clone(),
            Value::List(l) => l.borrow().clone(),
            other => {
                return err(format!(
                    "expected a tuple for {what}, found {}",
                    other.kind()
                ));
            }
        };
        items
            .iter()
            .map(|v| {
                let i = v.as_int(what)?;
                usize::try_from(i).or_else(|_| err(format!("negative {what}: {i}")))
            })
            .collect()
    }

    fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float => "float",
            Value::Str(_) => "str",
            Value::Bytes => "bytes",
            Value::Tuple(_) => "tuple",
            Value::List(_) => "list",
            Value::Dict(_) => "dict",
            Value::Global(_) => "class",
            Value::Storage(_) => "storage",
            Value::Tensor(_) => "tensor",
            Value::Object => "object",
            Value::Mark => "mark",
        }
    }
}

fn is_allowed_global(module: &str, name: &str) -> bool {
    matches!(
        (module, name),
        ("torch._utils", "_rebuild_tensor_v2")
            | ("torch._utils", "_rebuild_tensor")
            | ("torch._utils", "_rebuild_parameter")
            | ("collections", "OrderedDict")
            | ("argparse", "Namespace")
            | ("torch", "device")
    ) || (module == "torch" && StorageDtype::from_class(name).is_some())
}

/// A list or dict the machine made, held weakly so that [`Machine`]'s drop can empty it.
enum Made {
    List(Weak<RefCell<Vec<Value>>>),
    Dict(Weak<RefCell<Vec<(Value, Value)>>>),
}

impl Drop for Machine<'_> {
    /// Empties every list and dict the pickle made: one can hold itself (`d[k] = d`), even
    /// after nothing else refers to it, and reference-counted cycles are never freed
    /// otherwise. The values it returned are emptied too, so it is dropped after them.
    fn drop(&mut self) {
        let mut trash: Vec<Value> = Vec::new();
        for made in std::mem::take(&mut self.made) {
            match made {
                Made::List(w) => {
                    if let Some(l) = w.upgrade() {
                        trash.append(&mut std::mem::take(&mut *l.borrow_mut()));
                    }
                }
                Made::Dict(w) => {
                    if let Some(d) = w.upgrade() {
                        let items = std::mem::take(&mut *d.borrow_mut());
                        trash.extend(items.into_iter().flat_map(|(k, v)| [k, v]));
                    }
                }
            }
        }
    }
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    memo: HashMap<u32, Value>,
    /// Items put into lists, dicts and tuples so far.
    items: usize,
    /// Every list and dict made, for the drop; pruned of freed ones as it grows.
    made: Vec<Made>,
    /// The length of `made` at which it is pruned next.
    prune_at: usize,
}

impl<'a> Machine<'a> {
    fn new(data: &'a [u8]) -> Self {
        Machine {
            data,
            pos: 0,
            stack: Vec::new(),
            memo: HashMap::new(),
            items: 0,
            made: Vec::new(),
            prune_at: 1024,
        }
    }

    fn remember(&mut self, made: Made) {
        if self.made.len() >= self.prune_at {
            self.made.retain(|m| match m {
                Made::List(w) => w.strong_count() > 0,
                Made::Dict(w) => w.strong_count() > 0,
            });
            self.prune_at = (2 * self.made.len()).max(1024);
        }
        self.made.push(made);
    }

    fn new_list(&mut self, items: Vec<Value>) -> Value {
        let l = Rc::new(RefCell::new(items));
        self.remember(Made::List(Rc::downgrade(&l)));
        Value::List(l)
    }

    fn new_dict(&mut self) -> Value {
        let d = Rc::new(RefCell::new(Vec::new()));
        self.remember(Made::Dict(Rc::downgrade(&d)));
        Value::Dict(d)
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.data.len() - self.pos {
            return err(format!(
                "pickle stream ends early (needed {n} bytes at offset {})",
                self.pos
            ));
        }
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn line(&mut self) -> Result<&'a str> {
        let rest = &self.data[self.pos..];
        let end = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| ModelError::Pth {
                reason: "unterminated text line in pickle".into(),
            })?;
        self.pos += end + 1;
        std::str::from_utf8(&rest[..end]).or_else(|_| err("non-UTF-8 text in pickle"))
    }

    fn pop(&mut self) -> Result<Value> {
        self.stack.pop().ok_or_else(|| ModelError::Pth {
            reason: "pickle stack underflow".into(),
        })
    }

    fn push(&mut self, v: Value) -> Result<()> {
        if self.stack.len() >= MAX_ITEMS {
            return err("pickle stack too deep");
        }
        self.stack.push(v);
        Ok(())
    }

    /// Counts `n` more container items against [`MAX_ITEMS`].
    fn count_items(&mut self, n: usize) -> Result<()> {
        self.items = self.items.saturating_add(n);
        if self.items > MAX_ITEMS {
            return err(format!(
                "pickle builds more than {MAX_ITEMS} container items; a weights file holds a few thousand"
            ));
        }
        Ok(())
    }

    fn pop_mark(&mut self) -> Result<Vec<Value>> {
        let mark = self
            .stack
            .iter()
            .rposition(|v| matches!(v, Value::Mark))
            .ok_or_else(|| ModelError::Pth {
                reason: "pickle MARK missing".into(),
            })?;
        let items = self.stack.split_off(mark + 1);
        self.stack.pop();
        self.count_items(items.len())?;
        Ok(items)
    }

    fn top(&mut self) -> Result<&mut Value> {
        self.stack.last_mut().ok_or_else(|| ModelError::Pth {
            reason: "pickle stack underflow".into(),
        })
    }

    fn memoize(&mut self, key: u32) -> Result<()> {
        if self.memo.len() >= MAX_ITEMS {
            return err("pickle memo too large");
        }
        let v = self.top()?.clone();
        self.memo.insert(key, v);
        Ok(())
    }

    fn get(&mut self, key: u32) -> Result<()> {
        let v = self
            .memo
            .get(&key)
            .cloned()
            .ok_or_else(|| ModelError::Pth {
                reason: format!("pickle refers to memo entry {key} that was never stored"),
            })?;
        self.push(v)
    }

    fn set_items(&mut self, items: Vec<Value>) -> Result<()> {
        if !items.len().is_multiple_of(2) {
            return err("odd number of items for a dict");
        }
        match self.top()? {
            Value::Dict(d) => {
                let mut d = d.borrow_mut();
                let mut it = items.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    d.push((k, v));
                }
                Ok(())
            }
            Value::Object => Ok(()),
            other => err(format!("SETITEMS on a {}", other.kind())),
        }
    }

    fn append(&mut self, items: Vec<Value>) -> Result<()> {
        match self.top()? {
            Value::List(l) => {
                l.borrow_mut().extend(items);
                Ok(())
            }
            other => err(format!("APPEND on a {}", other.kind())),
        }
    }

    fn global(&mut self, module: &str, name: &str) -> Result<()> {
        if !is_allowed_global(module, name) {
            return err(format!(
                "refusing to load `{module}.{name}`: only tensors, storages and plain containers are allowed (the file may contain code)"
            ));
        }
        self.push(Value::Global(Rc::new((
            module.to_string(),
            name.to_string(),
        ))))
    }

    fn persistent_load(&mut self, pid: Value) -> Result<Value> {
        let Value::Tuple(t) = &pid else {
            return err(format!(
                "persistent id is a {}, expected a tuple",
                pid.kind()
            ));
        };
        match t.as_slice() {
            [
                Value::Str(tag),
                Value::Global(class),
                Value::Str(key),
                _location,
                _numel,
            ] if &**tag == "storage" => {
                let dtype = StorageDtype::from_class(&class.1).ok_or_else(|| ModelError::Pth {
                    reason: format!("unknown storage type {}", class.1),
                })?;
                Ok(Value::Storage(Rc::new(StorageRef {
                    dtype,
                    key: key.to_string(),
                })))
            }
            _ => {
                err("unsupported persistent id (expected ('storage', type, key, location, numel))")
            }
        }
    }

    fn reduce(&mut self, callable: Value, args: Value) -> Result<Value> {
        let Value::Global(g) = &callable else {
            return err(format!(
                "REDUCE on a {}, expected an allowed class",
                callable.kind()
            ));
        };
        let args: Vec<Value> = match &args {
            Value::Tuple(t) => t.as_ref().clone(),
            other => {
                return err(format!(
                    "REDUCE arguments are a {}, expected a tuple",
                    other.kind()
                ));
            }
        };
        match (g.0.as_str(), g.1.as_str()) {
            ("torch._utils", "_rebuild_tensor_v2") | ("torch._utils", "_rebuild_tensor") => {
                if args.len() < 4 {
                    return err("_rebuild_tensor_v2 with fewer than 4 arguments");
                }
                let Value::Storage(storage) = &args[0] else {
                    return err(format!("tensor storage is a {}", args[0].kind()));
                };
                let offset = args[1].as_int("storage offset")?;
                let shape = args[2].as_usize_list("tensor size")?;
                let stride = args[3].as_usize_list("tensor stride")?;
                if offset < 0 || shape.len() != stride.len() {
                    return err("tensor offset negative or size/stride lengths differ");
                }
                Ok(Value::Tensor(Rc::new(TensorRef {
                    storage: storage.as_ref().clone(),
                    offset: offset as usize,
                    shape,
                    stride,
                })))
            }
            ("torch._utils", "_rebuild_parameter") => match args.first() {
                Some(t @ Value::Tensor(_)) => Ok(t.clone()),
                _ => err("_rebuild_parameter without a tensor"),
            },
            ("collections", "OrderedDict") => Ok(self.new_dict()),
            ("argparse", "Namespace") | ("torch", "device") => Ok(Value::Object),
            (m, n) => err(format!("`{m}.{n}` cannot be called")),
        }
    }

    fn run(&mut self) -> Result<Value> {
        loop {
            let op = self.u8()?;
            match op {
                0x80 => {
                    self.u8()?;
                }
                0x95 => {
                    self.take(8)?;
                }
                b'}' => {
                    let d = self.new_dict();
                    self.push(d)?
                }
                b']' => {
                    let l = self.new_list(Vec::new());
                    self.push(l)?
                }
                b')' => self.push(Value::Tuple(Rc::new(Vec::new())))?,
                b'(' => self.push(Value::Mark)?,
                b'q' => {
                    let k = self.u8()? as u32;
                    self.memoize(k)?;
                }
                b'r' => {
                    let k = self.u32()?;
                    self.memoize(k)?;
                }
                0x94 => {
                    let k = self.memo.len() as u32;
                    self.memoize(k)?;
                }
                b'h' => {
                    let k = self.u8()? as u32;
                    self.get(k)?;
                }
                b'j' => {
                    let k = self.u32()?;
                    self.get(k)?;
                }
                b'X' | 0x8c | 0x8d => {
                    let n = match op {
                        b'X' => self.u32()? as usize,
                        0x8c => self.u8()? as usize,
                        _ => {
                            let b = self.take(8)?;
                            usize::try_from(u64::from_le_bytes(b.try_into().expect("8 bytes")))
                                .or_else(|_| err("string too long"))?
                        }
                    };
                    let s =
                        std::str::from_utf8(self.take(n)?).or_else(|_| err("non-UTF-8 string"))?;
                    self.push(Value::Str(Rc::from(s)))?;
                }
                b'U' | b'T' | b'C' | b'B' | 0x8e => {
                    let n = match op {
                        b'U' | b'C' => self.u8()? as usize,
                        b'T' | b'B' => self.u32()? as usize,
                        _ => {
                            let b = self.take(8)?;
                            usize::try_from(u64::from_le_bytes(b.try_into().expect("8 bytes")))
                                .or_else(|_| err("bytes too long"))?
                        }
                    };
                    let b = self.take(n)?;
                    let v = if matches!(op, b'U' | b'T') {
                        Value::Str(Rc::from(String::from_utf8_lossy(b).as_ref()))
                    } else {
                        Value::Bytes
                    };
                    self.push(v)?;
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.global(module, name)?;
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (&module, &name) {
                        (Value::Str(m), Value::Str(n)) => self.global(m, n)?,
                        _ => return err("STACK_GLOBAL with non-string operands"),
                    }
                }
                b'J' => {
                    let v = self.u32()? as i32;
                    self.push(Value::Int(v as i64))?;
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push(Value::Int(v as i64))?;
                }
                b'M' => {
                    let b = self.take(2)?;
                    self.push(Value::Int(u16::from_le_bytes([b[0], b[1]]) as i64))?;
                }
                0x8a => {
                    let n = self.u8()? as usize;
                    let b = self.take(n)?;
                    if n > 8 {
                        return err("integer wider than 64 bits");
                    }
                    let mut buf = if b.last().is_some_and(|&x| x & 0x80 != 0) {
                        [0xffu8; 8]
                    } else {
                        [0u8; 8]
                    };
                    buf[..n].copy_from_slice(b);
                    self.push(Value::Int(i64::from_le_bytes(buf)))?;
                }
                b'I' => {
                    let l = self.line()?;
                    let v = match l {
                        "00" => Value::Bool(false),
                        "01" => Value::Bool(true),
                        _ => Value::Int(
                            l.parse()
                                .or_else(|_| err(format!("bad INT literal {l:?}")))?,
                        ),
                    };
                    self.push(v)?;
                }
                b'G' => {
                    self.take(8)?;
                    self.push(Value::Float)?;
                }
                b'F' => {
                    let l = self.line()?;
                    l.parse::<f64>()
                        .or_else(|_| err(format!("bad FLOAT literal {l:?}")))?;
                    self.push(Value::Float)?;
                }
                0x88 => self.push(Value::Bool(true))?,
                0x89 => self.push(Value::Bool(false))?,
                b'N' => self.push(Value::None)?,
                b't' => {
                    let items = self.pop_mark()?;
                    self.push(Value::Tuple(Rc::new(items)))?;
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < n {
                        return err("pickle stack underflow");
                    }
                    self.count_items(n)?;
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.push(Value::Tuple(Rc::new(items)))?;
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    let l = self.new_list(items);
                    self.push(l)?;
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    let d = self.new_dict();
                    self.push(d)?;
                    self.set_items(items)?;
                }
                0x8f => {
                    let l = self.new_list(Vec::new());
                    self.push(l)?
                }
                0x90 => {
                    let items = self.pop_mark()?;
                    self.append(items)?;
                }
                0x91 => {
                    let items = self.pop_mark()?;
                    let l = self.new_list(items);
                    self.push(l)?;
                }
                b'R' | 0x81 => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let v = self.reduce(callable, args)?;
                    self.push(v)?;
                }
                b'b' => {
                    // BUILD sets an object's state (e.g. a state dict's `_metadata`): not needed.
                    self.pop()?;
                    if self.stack.is_empty() {
                        return err("BUILD on an empty stack");
                    }
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.count_items(2)?;
                    self.set_items(vec![k, v])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    self.set_items(items)?;
                }
                b'a' => {
                    let v = self.pop()?;
                    self.count_items(1)?;
                    self.append(vec![v])?;
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    self.append(items)?;
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let v = self.persistent_load(pid)?;
                    self.push(v)?;
                }
                b'0' => {
                    self.pop()?;
                }
                b'2' => {
                    let v = self.top()?.clone();
                    self.push(v)?;
                }
                b'.' => return self.pop(),
                other => {
                    return err(format!(
                        "pickle opcode 0x{other:02x} at offset {} is not allowed in a weights file",
                        self.pos - 1
                    ));
                }
            }
        }
    }
}

/// The storages of an archive, read on demand with size checks.
struct Archive<'a> {
    zip: zip::ZipArchive<Cursor<&'a [u8]>>,
    prefix: String,
    cache: HashMap<String, Rc<Vec<u8>>>,
    /// Where each storage read so far starts in the archive: two names for one stream would
    /// hand out the same bytes twice.
    starts: HashMap<u64, String>,
    /// Storage bytes that may still be read.
    budget: u64,
    /// f32 tensor bytes that may still be made (the total was checked before any was read;
    /// this guards each view on its own).
    tensor_budget: u64,
    /// Elements of each storage, from the archive's directory (nothing read).
    lengths: HashMap<String, usize>,
    /// Elements of each storage that the listed tensors take.
    used: HashMap<String, usize>,
}

impl<'a> Archive<'a> {
    /// Elements in storage `key` as the archive's directory gives it, without reading it
    /// (the reader checks later that the stream holds what the directory says).
    fn storage_len(&mut self, storage: &StorageRef) -> Result<usize> {
        if let Some(&n) = self.lengths.get(&storage.key) {
            return Ok(n);
        }
        let name = format!("{}data/{}", self.prefix, storage.key);
        let size = self
            .zip
            .by_name(&name)
            .map_err(|e| ModelError::Pth {
                reason: format!("storage `{name}` missing from the archive: {e}"),
            })?
            .size();
        let n = usize::try_from(size).unwrap_or(usize::MAX) / storage.dtype.size();
        self.lengths.insert(storage.key.clone(), n);
        Ok(n)
    }

    /// Refuses a view its storage cannot hold, and a storage that tensors take over and over
    /// (a memoised container reached along many paths is copied once per path).
    fn check_listed(&mut self, t: &TensorRef, numel: u64) -> Result<()> {
        let storage_len = self.storage_len(&t.storage)?;
        let numel = match usize::try_from(numel) {
            Ok(n) if numel <= MAX_NUMEL => n,
            _ => return err(format!("tensor of shape {:?} is too large", t.shape)),
        };
        check_view(t, numel, storage_len)?;
        let used = self.used.entry(t.storage.key.clone()).or_default();
        *used += numel;
        if *used > MAX_USES_PER_ELEMENT * storage_len {
            return err(format!(
                "tensors reading storage `{}` take {} elements from its {storage_len}: the pickle names the same data over and over",
                t.storage.key, *used
            ));
        }
        Ok(())
    }

    fn storage(&mut self, key: &str) -> Result<Rc<Vec<u8>>> {
        if let Some(b) = self.cache.get(key) {
            return Ok(b.clone());
        }
        let name = format!("{}data/{key}", self.prefix);
        let file = self.zip.by_name(&name).map_err(|e| ModelError::Pth {
            reason: format!("storage `{name}` missing from the archive: {e}"),
        })?;
        let size = file.size();
        if size > MAX_NUMEL * 8 {
            return err(format!(
                "storage `{name}` is implausibly large ({size} bytes)"
            ));
        }
        if size > self.budget {
            return err(format!(
                "storage `{name}` ({size} bytes) exceeds what is left of the reading budget ({} bytes): the archive holds more than this machine can import",
                self.budget
            ));
        }
        if let Some(other) = self.starts.insert(file.data_start(), name.clone()) {
            return err(format!(
                "storages `{other}` and `{name}` are one stream of the archive under two names"
            ));
        }
        let buf = read_entry(file, &name)?;
        self.budget -= size;
        let rc = Rc::new(buf);
        self.cache.insert(key.to_string(), rc.clone());
        Ok(rc)
    }

    fn materialise(&mut self, t: &TensorRef) -> Result<RawTensor> {
        let numel = t.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        let numel = match numel {
            Some(n) if n as u64 <= MAX_NUMEL => n,
            _ => return err(format!("tensor of shape {:?} is too large", t.shape)),
        };
        let bytes = self.storage(&t.storage.key)?;
        let es = t.storage.dtype.size();
        let storage_len = bytes.len() / es;
        // Checked when listed, against the directory's length; again here against the bytes.
        check_view(t, numel, storage_len)?;
        let bytes_f32 = 4 * numel as u64;
        if bytes_f32 > self.tensor_budget {
            return err(format!(
                "the file's tensors take more than the reading budget in f32 (at tensor of shape {:?}): it holds more, or refers to the same tensors more often, than this machine can import",
                t.shape
            ));
        }
        self.tensor_budget -= bytes_f32;
        let mut data = Vec::with_capacity(numel);
        let mut index = vec![0usize; t.shape.len()];
        for _ in 0..numel {
            let flat = t.offset
                + index
                    .iter()
                    .zip(&t.stride)
                    .map(|(i, s)| i * s)
                    .sum::<usize>();
            data.push(t.storage.dtype.read(&bytes[flat * es..flat * es + es]));
            for d in (0..index.len()).rev() {
                index[d] += 1;
                if index[d] < t.shape[d] {
                    break;
                }
                index[d] = 0;
            }
        }
        Ok(RawTensor::new(t.shape.clone(), data))
    }
}

/// The most deflate can expand: 258 bytes from every 2 bits of a stream (about 1032:1).
const MAX_DEFLATE_RATIO: u64 = 1100;

/// Reads a zip entry whose header says it holds `size` bytes, trusting that number only as
/// far as the bytes bear it out: a size no compressed stream of that length can give is
/// refused before anything is read, nothing is allocated by the header alone, and an entry
/// that holds more or less than it says is refused.
fn read_entry(file: zip::read::ZipFile<'_, Cursor<&[u8]>>, name: &str) -> Result<Vec<u8>> {
    let (size, packed) = (file.size(), file.compressed_size());
    let possible = match file.compression() {
        zip::CompressionMethod::Stored => size == packed,
        _ => {
            size <= packed
                .saturating_mul(MAX_DEFLATE_RATIO)
                .saturating_add(4096)
        }
    };
    if !possible {
        return err(format!(
            "`{name}` says it holds {size} bytes in {packed} stored bytes, which its compression cannot give: the archive is corrupt or forged"
        ));
    }
    read_exactly(file, size, name)
}

/// Reads `size` bytes from `file`, refusing more or less.
fn read_exactly(file: impl Read, size: u64, name: &str) -> Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(size.min(64 << 20) as usize);
    let mut limited = file.take(size + 1);
    limited.read_to_end(&mut buf).map_err(|e| ModelError::Pth {
        reason: format!("reading `{name}`: {e}"),
    })?;
    if buf.len() as u64 != size {
        return err(format!(
            "`{name}` holds {} bytes where the archive says {size}: the archive is corrupt or forged",
            if buf.len() as u64 > size {
                format!("more than {size}")
            } else {
                buf.len().to_string()
            }
        ));
    }
    Ok(buf)
}

/// Refuses a view that reads past its storage, repeats elements (a stride of 0 or strides
/// that overlap) or holds more elements than the storage.
fn check_view(t: &TensorRef, numel: usize, storage_len: usize) -> Result<()> {
    if numel == 0 {
        return Ok(());
    }
    let describe = || {
        format!(
            "tensor of shape {:?} (offset {}, stride {:?}) of storage `{}` ({storage_len} elements)",
            t.shape, t.offset, t.stride, t.storage.key
        )
    };
    let last = t
        .shape
        .iter()
        .zip(&t.stride)
        .try_fold(t.offset, |acc, (&d, &s)| {
            (d - 1).checked_mul(s).and_then(|x| x.checked_add(acc))
        });
    if !matches!(last, Some(l) if l < storage_len) {
        return err(format!("{} reads past its storage", describe()));
    }
    if numel > storage_len {
        return err(format!("{} has more elements than its storage", describe()));
    }
    // Dimensions by increasing stride: each must step over everything the ones inside it
    // span, or two indices reach one element.
    let mut dims: Vec<(usize, usize)> = t
        .stride
        .iter()
        .zip(&t.shape)
        .filter(|(_, d)| **d > 1)
        .map(|(&s, &d)| (s, d))
        .collect();
    dims.sort_unstable();
    let mut span = 1usize;
    for (stride, size) in dims {
        if stride < span {
            return err(format!(
                "{} repeats elements (a stride of 0, or strides that overlap)",
                describe()
            ));
        }
        span = stride.saturating_mul(size - 1).saturating_add(span);
    }
    Ok(())
}

/// What walking the value tree has met so far.
struct Walk {
    /// Values visited.
    visits: usize,
    /// f32 bytes of the tensors listed.
    bytes: u64,
    /// The tensor budget.
    limit: u64,
    /// Characters of the tensor names listed.
    path_chars: usize,
}

/// The float tensors of the value tree with their dotted paths, in order (a tensor reached
/// along several paths is listed once per path). Nothing is read yet.
fn flatten(
    value: &Value,
    path: &str,
    archive: &mut Archive<'_>,
    walk: &mut Walk,
    out: &mut Vec<(String, Rc<TensorRef>)>,
    depth: usize,
) -> Result<()> {
    if depth > 64 {
        return err("nesting deeper than 64 levels");
    }
    walk.visits += 1;
    if walk.visits > MAX_VISITS {
        return err(format!(
            "walking the pickle's containers visits more than {MAX_VISITS} values (containers referenced from many places)"
        ));
    }
    match value {
        Value::Tensor(t) if t.storage.dtype_is_float() => {
            // Counted to the end, so that the refusal can say what the file needs; listed only
            // within the budget, so that the list stays small.
            let numel = t
                .shape
                .iter()
                .try_fold(1u64, |a, &d| a.checked_mul(d as u64));
            if let Some(n) = numel {
                archive.check_listed(t, n)?;
            }
            walk.bytes = numel
                .and_then(|n| n.checked_mul(4))
                .and_then(|b| b.checked_add(walk.bytes))
                .unwrap_or(u64::MAX);
            walk.path_chars += path.len();
            if walk.path_chars > MAX_PATH_CHARS {
                return err(format!(
                    "its tensor names take more than {MAX_PATH_CHARS} characters together"
                ));
            }
            if walk.bytes <= walk.limit {
                out.push((path.to_string(), t.clone()))
            }
        }
        Value::Dict(d) => {
            for (k, v) in d.borrow().iter() {
                let key = match k {
                    Value::Str(s) => s.to_string(),
                    Value::Int(i) => i.to_string(),
                    _ => continue,
                };
                let child = if path.is_empty() {
                    key
                } else {
                    format!("{path}.{key}")
                };
                flatten(v, &child, archive, walk, out, depth + 1)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Reads the listed tensors (their total was checked as they were listed).
fn materialise_all(
    tensors: Vec<(String, Rc<TensorRef>)>,
    archive: &mut Archive<'_>,
) -> Result<TensorMap> {
    let mut out = TensorMap::new();
    for (path, t) in tensors {
        let raw = archive.materialise(&t)?;
        out.insert(path, raw);
    }
    Ok(out)
}

impl StorageRef {
    fn dtype_is_float(&self) -> bool {
        matches!(
            self.dtype,
            StorageDtype::F32 | StorageDtype::F16 | StorageDtype::BF16 | StorageDtype::F64
        )
    }
}

/// Whether the bytes look like a zip archive (the `.pth` format since PyTorch 1.6).
pub fn is_zip(bytes: &[u8]) -> bool {
    bytes.starts_with(b"PK\x03\x04")
}

/// Reads every floating-point tensor of a `torch.save` archive, named by its dotted path
/// through nested dicts (`teacher.backbone.blocks.0.attn.qkv.weight`). Integer tensors and
/// non-tensor values (epochs, arguments) are skipped.
pub fn read_pth(bytes: &[u8]) -> Result<TensorMap> {
    read_pth_with(bytes, PthLimits::generous())
}

/// [`read_pth`] within `limits`.
pub fn read_pth_with(bytes: &[u8], limits: PthLimits) -> Result<TensorMap> {
    if !is_zip(bytes) {
        if bytes.first() == Some(&0x80) {
            return err(
                "this is a legacy (pre-1.6) PyTorch file; re-save it with a recent PyTorch (`torch.save(torch.load(f), f)`)",
            );
        }
        return err("not a zip archive (a .pth from torch.save starts with `PK`)");
    }
    let zip = zip::ZipArchive::new(Cursor::new(bytes)).map_err(|e| ModelError::Pth {
        reason: format!("corrupt or truncated zip archive: {e}"),
    })?;
    let pkl_name = zip
        .file_names()
        .find(|n| n.ends_with("data.pkl") && n.matches('/').count() <= 1)
        .map(str::to_string)
        .ok_or_else(|| ModelError::Pth {
            reason: "no data.pkl in the archive".into(),
        })?;
    let prefix = pkl_name.trim_end_matches("data.pkl").to_string();
    let mut archive = Archive {
        zip,
        prefix,
        cache: HashMap::new(),
        starts: HashMap::new(),
        budget: limits.max_storage_bytes,
        tensor_budget: limits.max_tensor_bytes,
        lengths: HashMap::new(),
        used: HashMap::new(),
    };
    let pickle = {
        let f = archive
            .zip
            .by_name(&pkl_name)
            .map_err(|e| ModelError::Pth {
                reason: format!("reading {pkl_name}: {e}"),
            })?;
        if f.size() > MAX_PICKLE_BYTES {
            return err(format!(
                "{pkl_name} is {} bytes; a weights file's pickle is far below {MAX_PICKLE_BYTES}",
                f.size()
            ));
        }
        read_entry(f, &pkl_name)?
    };
    let mut machine = Machine::new(&pickle);
    let root = machine.run()?;
    let mut tensors = Vec::new();
    let mut walk = Walk {
        visits: 0,
        bytes: 0,
        limit: limits.max_tensor_bytes,
        path_chars: 0,
    };
    let flat = flatten(&root, "", &mut archive, &mut walk, &mut tensors, 0);
    // The containers are emptied only now: the root is one of them.
    drop(machine);
    drop(root);
    flat?;
    if walk.bytes > walk.limit {
        return Err(ModelError::TooLarge {
            model: "this checkpoint".into(),
            needed_mib: walk.bytes.div_ceil(1 << 20),
            available: match limits.reason.as_str() {
                "" => format!("at most {} MiB may be read", walk.limit >> 20),
                r => r.to_string(),
            },
        });
    }
    materialise_all(tensors, &mut archive)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `data`, then drops the machine and its value; whether every list and dict it
    /// made was freed.
    fn all_freed(data: &[u8]) -> bool {
        let mut m = Machine::new(data);
        let root = m.run();
        let weak: Vec<Made> = m
            .made
            .iter()
            .map(|x| match x {
                Made::List(w) => Made::List(w.clone()),
                Made::Dict(w) => Made::Dict(w.clone()),
            })
            .collect();
        assert!(!weak.is_empty());
        drop(m);
        drop(root);
        weak.iter().all(|x| match x {
            Made::List(w) => w.upgrade().is_none(),
            Made::Dict(w) => w.upgrade().is_none(),
        })
    }

    // `d = {}; d["k"] = d`, memoised as 0: EMPTY_DICT BINPUT 0 BINUNICODE "k" BINGET 0 SETITEM.
    const CYCLE: &[u8] = b"}q\x00X\x01\x00\x00\x00kh\x00s";

    #[test]
    fn a_dict_that_holds_itself_is_freed() {
        assert!(all_freed(&[CYCLE, b"."].concat()));
    }

    #[test]
    fn a_dict_that_holds_itself_is_freed_when_the_pickle_fails_later() {
        // The cycle, then an opcode the reader refuses.
        assert!(all_freed(&[CYCLE, b"\xff"].concat()));
    }

    #[test]
    fn a_cycle_nothing_refers_to_any_more_is_freed() {
        // The cycle popped, its memo slot given to a list, the list returned.
        assert!(all_freed(&[CYCLE, b"0]q\x00."].concat()));
        // Lists too: `l = []; l.append(l)`.
        assert!(all_freed(b"]q\x00h\x00a0]."));
    }
}
