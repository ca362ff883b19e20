// engine/loader/torch_pickle.cc — see torch_pickle.h.
#include "engine/loader/torch_pickle.h"

#include <deque>
#include <limits>
#include <optional>
#include <string_view>
#include <unordered_map>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace specmoe::engine {
namespace {

uint16_t Read16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }
uint32_t Read32(const uint8_t* p) {
  return static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[1]) << 8) |
         (static_cast<uint32_t>(p[2]) << 16) | (static_cast<uint32_t>(p[3]) << 24);
}
uint64_t Read64(const uint8_t* p) {
  return static_cast<uint64_t>(Read32(p)) | (static_cast<uint64_t>(Read32(p + 4)) << 32);
}

// ----------------------------------------------------------------------------------------
// Zip (PKWARE APPNOTE 4.3.16 end of central directory, 4.3.14-15 ZIP64, 4.3.12 central
// directory header, 4.3.7 local file header, 4.5.3 ZIP64 extended information extra field).

constexpr uint32_t kEocdSignature = 0x06054b50;
constexpr uint32_t kZip64LocatorSignature = 0x07064b50;
constexpr uint32_t kZip64EocdSignature = 0x06064b50;
constexpr uint32_t kCentralHeaderSignature = 0x02014b50;
constexpr uint32_t kLocalHeaderSignature = 0x04034b50;
constexpr size_t kEocdBytes = 22;
constexpr size_t kZip64LocatorBytes = 20;
constexpr size_t kZip64EocdBytes = 56;
constexpr size_t kCentralHeaderBytes = 46;
constexpr size_t kLocalHeaderBytes = 30;

absl::Status ZipError(const std::string& file, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(file, ": corrupt zip archive: ", what));
}

}  // namespace

absl::StatusOr<std::vector<ZipEntry>> ParseZipDirectory(const uint8_t* data, size_t size,
                                                        const std::string& file) {
  if (size < kEocdBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        file, ": truncated or not a zip archive (", size, " bytes, no end-of-central-directory)"));
  }
  // The EOCD record is the last 22 bytes plus a comment of at most 65535 bytes.
  const size_t lowest = size - kEocdBytes > 0xFFFF ? size - kEocdBytes - 0xFFFF : 0;
  std::optional<size_t> eocd;
  for (size_t pos = size - kEocdBytes + 1; pos-- > lowest;) {
    if (Read32(data + pos) == kEocdSignature &&
        pos + kEocdBytes + Read16(data + pos + 20) <= size) {
      eocd = pos;
      break;
    }
  }
  if (!eocd) {
    return absl::InvalidArgumentError(absl::StrCat(
        file, ": truncated or not a zip archive (no end-of-central-directory record)"));
  }
  uint64_t entries = Read16(data + *eocd + 10);
  uint64_t cd_size = Read32(data + *eocd + 12);
  uint64_t cd_offset = Read32(data + *eocd + 16);
  if (*eocd >= kZip64LocatorBytes &&
      Read32(data + *eocd - kZip64LocatorBytes) == kZip64LocatorSignature) {
    const uint64_t z64 = Read64(data + *eocd - kZip64LocatorBytes + 8);
    if (z64 > size || size - z64 < kZip64EocdBytes || Read32(data + z64) != kZip64EocdSignature) {
      return ZipError(file, "bad ZIP64 end-of-central-directory record");
    }
    entries = Read64(data + z64 + 32);
    cd_size = Read64(data + z64 + 40);
    cd_offset = Read64(data + z64 + 48);
  }
  if (cd_offset > size || cd_size > size - cd_offset) {
    return absl::InvalidArgumentError(absl::StrCat(
        file, ": truncated zip archive: central directory [", cd_offset, ", +", cd_size,
        ") lies outside the ", size, "-byte file"));
  }
  if (entries > cd_size / kCentralHeaderBytes) {
    return ZipError(file, absl::StrCat(entries, " entries cannot fit a central directory of ",
                                       cd_size, " bytes"));
  }

  std::vector<ZipEntry> result;
  result.reserve(entries);
  const uint64_t cd_end = cd_offset + cd_size;
  uint64_t p = cd_offset;
  for (uint64_t i = 0; i < entries; ++i) {
    if (cd_end - p < kCentralHeaderBytes || Read32(data + p) != kCentralHeaderSignature) {
      return ZipError(file, absl::StrCat("bad central directory header ", i));
    }
    const uint8_t* h = data + p;
    const uint16_t flags = Read16(h + 8);
    const uint16_t method = Read16(h + 10);
    uint64_t compressed = Read32(h + 20);
    uint64_t uncompressed = Read32(h + 24);
    const size_t name_len = Read16(h + 28);
    const size_t extra_len = Read16(h + 30);
    const size_t comment_len = Read16(h + 32);
    uint64_t local_offset = Read32(h + 42);
    if (cd_end - p - kCentralHeaderBytes < name_len + extra_len + comment_len) {
      return ZipError(file, absl::StrCat("central directory header ", i, " overruns the directory"));
    }
    ZipEntry entry;
    entry.name.assign(reinterpret_cast<const char*>(h + kCentralHeaderBytes), name_len);
    entry.method = method;
    if (flags & 1) {
      return ZipError(file, absl::StrCat("entry '", entry.name, "' is encrypted"));
    }
    // ZIP64 extra field: the 64-bit values present are those whose 32-bit field is 0xFFFFFFFF,
    // in the order uncompressed, compressed, local header offset.
    const uint8_t* x = h + kCentralHeaderBytes + name_len;
    const uint8_t* x_end = x + extra_len;
    while (x_end - x >= 4) {
      const uint16_t id = Read16(x);
      const size_t len = Read16(x + 2);
      if (static_cast<size_t>(x_end - x - 4) < len) {
        return ZipError(file, absl::StrCat("entry '", entry.name, "' has a bad extra field"));
      }
      if (id == 0x0001) {
        const uint8_t* r = x + 4;
        const uint8_t* r_end = r + len;
        for (uint64_t* field : {&uncompressed, &compressed, &local_offset}) {
          if (*field != 0xFFFFFFFFu) continue;
          if (r_end - r < 8) {
            return ZipError(file, absl::StrCat("entry '", entry.name, "' has a short ZIP64 field"));
          }
          *field = Read64(r);
          r += 8;
        }
      }
      x += 4 + len;
    }
    if (local_offset > size || size - local_offset < kLocalHeaderBytes ||
        Read32(data + local_offset) != kLocalHeaderSignature) {
      return ZipError(file, absl::StrCat("entry '", entry.name, "' has a bad local header"));
    }
    const uint64_t data_offset = local_offset + kLocalHeaderBytes +
                                 Read16(data + local_offset + 26) +
                                 Read16(data + local_offset + 28);
    if (data_offset > size || compressed > size - data_offset) {
      return absl::InvalidArgumentError(
          absl::StrCat(file, ": truncated zip archive: entry '", entry.name, "' needs ",
                       compressed, " bytes at offset ", data_offset, " of a ", size,
                       "-byte file"));
    }
    if (method == 0 && compressed != uncompressed) {
      return ZipError(file, absl::StrCat("stored entry '", entry.name, "' has compressed size ",
                                         compressed, " != size ", uncompressed));
    }
    entry.data_offset = data_offset;
    entry.size = compressed;
    result.push_back(std::move(entry));
    p += kCentralHeaderBytes + name_len + extra_len + comment_len;
  }
  return result;
}

// ----------------------------------------------------------------------------------------
// Pickle VM.

namespace {

// A pickled value. Values live in the VM's arena and refer to each other by pointer, so a
// memo cycle (a list appended to itself) is harmless and nothing is freed recursively.
struct Value {
  enum class Kind { kNone, kBool, kInt, kFloat, kString, kTuple, kList, kDict, kGlobal,
                    kStorage, kTensor };
  Kind kind = Kind::kNone;
  int64_t number = 0;                         // kBool, kInt
  std::string text;                           // kString; kGlobal: "module.name"
  std::vector<Value*> items;                  // kTuple, kList
  std::vector<std::pair<Value*, Value*>> entries;  // kDict
  // kStorage: persistent id ('storage', type, key, location, numel).
  std::optional<kernels::DType> dtype;        // empty: unsupported storage type (in `text`)
  std::string key;
  // kTensor: _rebuild_tensor_v2(storage, offset, size, stride, ...).
  Value* storage = nullptr;
  int64_t storage_offset = 0;
  std::vector<int64_t> shape;
  std::vector<int64_t> stride;
};
using Kind = Value::Kind;

const char* KindName(Kind kind) {
  switch (kind) {
    case Kind::kNone: return "None";
    case Kind::kBool: return "bool";
    case Kind::kInt: return "int";
    case Kind::kFloat: return "float";
    case Kind::kString: return "str";
    case Kind::kTuple: return "tuple";
    case Kind::kList: return "list";
    case Kind::kDict: return "dict";
    case Kind::kGlobal: return "global";
    case Kind::kStorage: return "storage";
    case Kind::kTensor: return "tensor";
  }
  return "?";
}

// Largest stack the VM accepts; a state dict needs a few dozen entries.
constexpr size_t kMaxStack = 1 << 20;

class PickleVm {
 public:
  PickleVm(const uint8_t* data, size_t size, const std::string& file)
      : data_(data), size_(size), file_(file) {}

  absl::StatusOr<Value*> Run();

 private:
  absl::Status Error(absl::string_view what) const {
    return absl::InvalidArgumentError(
        absl::StrCat(file_, ": unsupported or corrupt pickle (data.pkl) at byte ", op_pos_, ": ",
                     what));
  }
  Value* New(Kind kind) {
    arena_.emplace_back();
    arena_.back().kind = kind;
    return &arena_.back();
  }
  absl::Status Push(Value* v) {
    if (stack_.size() >= kMaxStack) return Error("stack too deep");
    stack_.push_back(v);
    return absl::OkStatus();
  }
  absl::StatusOr<Value*> Pop() {
    if (stack_.size() <= MarkFloor()) return Error("stack underflow");
    Value* v = stack_.back();
    stack_.pop_back();
    return v;
  }
  size_t MarkFloor() const { return marks_.empty() ? 0 : marks_.back(); }
  // Pops everything above the topmost mark, and the mark.
  absl::StatusOr<std::vector<Value*>> PopToMark() {
    if (marks_.empty()) return Error("no MARK on the stack");
    const size_t mark = marks_.back();
    marks_.pop_back();
    std::vector<Value*> items(stack_.begin() + static_cast<std::ptrdiff_t>(mark), stack_.end());
    stack_.resize(mark);
    return items;
  }
  absl::Status Need(size_t n) const {
    if (size_ - pos_ < n) return Error("truncated");
    return absl::OkStatus();
  }
  absl::StatusOr<std::string> ReadLine() {
    for (size_t i = pos_; i < size_; ++i) {
      if (data_[i] == '\n') {
        std::string line(reinterpret_cast<const char*>(data_ + pos_), i - pos_);
        pos_ = i + 1;
        return line;
      }
    }
    return Error("truncated GLOBAL");
  }
  absl::Status PushString(size_t len) {
    if (auto s = Need(len); !s.ok()) return s;
    Value* v = New(Kind::kString);
    v->text.assign(reinterpret_cast<const char*>(data_ + pos_), len);
    pos_ += len;
    return Push(v);
  }
  absl::Status PushInt(int64_t n) {
    Value* v = New(Kind::kInt);
    v->number = n;
    return Push(v);
  }
  absl::Status Put(uint64_t index) {
    if (stack_.size() <= MarkFloor()) return Error("memo put with an empty stack");
    memo_[index] = stack_.back();
    return absl::OkStatus();
  }
  absl::Status Get(uint64_t index) {
    const auto it = memo_.find(index);
    if (it == memo_.end()) return Error(absl::StrCat("memo key ", index, " was never put"));
    return Push(it->second);
  }
  absl::Status Reduce(Value* callable, Value* args);
  absl::Status PersistentLoad(Value* pid);

  const uint8_t* data_;
  size_t size_;
  const std::string& file_;
  size_t pos_ = 0;
  size_t op_pos_ = 0;
  std::deque<Value> arena_;
  std::vector<Value*> stack_;
  std::vector<size_t> marks_;
  std::unordered_map<uint64_t, Value*> memo_;
};

// Reads a tuple of ints (a tensor's size or stride).
bool IntTuple(const Value* v, std::vector<int64_t>* out) {
  if (v->kind != Kind::kTuple) return false;
  out->clear();
  for (const Value* item : v->items) {
    if (item->kind != Kind::kInt) return false;
    out->push_back(item->number);
  }
  return true;
}

absl::Status PickleVm::Reduce(Value* callable, Value* args) {
  if (callable->kind != Kind::kGlobal) {
    return Error(absl::StrCat("REDUCE of a ", KindName(callable->kind), ", not a global"));
  }
  if (args->kind != Kind::kTuple) return Error("REDUCE arguments are not a tuple");
  const std::string& name = callable->text;
  if (name == "collections.OrderedDict") {
    if (!args->items.empty()) return Error("OrderedDict called with arguments");
    return Push(New(Kind::kDict));
  }
  if (name == "torch._utils._rebuild_tensor_v2") {
    // (storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])
    if (args->items.size() < 4) return Error("_rebuild_tensor_v2 with fewer than 4 arguments");
    Value* tensor = New(Kind::kTensor);
    tensor->storage = args->items[0];
    if (tensor->storage->kind != Kind::kStorage) {
      return Error("_rebuild_tensor_v2 argument 0 is not a storage");
    }
    if (args->items[1]->kind != Kind::kInt) {
      return Error("_rebuild_tensor_v2 storage offset is not an int");
    }
    tensor->storage_offset = args->items[1]->number;
    if (!IntTuple(args->items[2], &tensor->shape) || !IntTuple(args->items[3], &tensor->stride)) {
      return Error("_rebuild_tensor_v2 size or stride is not a tuple of ints");
    }
    return Push(tensor);
  }
  if (name == "torch._utils._rebuild_parameter") {
    // (data, requires_grad, backward_hooks): the parameter's data is the tensor.
    if (args->items.empty() || args->items[0]->kind != Kind::kTensor) {
      return Error("_rebuild_parameter without a tensor");
    }
    return Push(args->items[0]);
  }
  return Error(absl::StrCat("call of unsupported global '", name,
                            "' (only a state dict of tensors is read)"));
}

absl::Status PickleVm::PersistentLoad(Value* pid) {
  // ('storage', torch.FloatStorage, key, location, numel)
  if (pid->kind != Kind::kTuple || pid->items.size() != 5 ||
      pid->items[0]->kind != Kind::kString || pid->items[0]->text != "storage" ||
      pid->items[1]->kind != Kind::kGlobal || pid->items[2]->kind != Kind::kString ||
      pid->items[4]->kind != Kind::kInt || pid->items[4]->number < 0) {
    return Error("persistent id is not ('storage', type, key, location, numel)");
  }
  Value* storage = New(Kind::kStorage);
  storage->text = pid->items[1]->text;
  if (storage->text == "torch.FloatStorage") {
    storage->dtype = kernels::DType::kF32;
  } else if (storage->text == "torch.HalfStorage") {
    storage->dtype = kernels::DType::kF16;
  } else if (storage->text == "torch.BFloat16Storage") {
    storage->dtype = kernels::DType::kBF16;
  }
  storage->key = pid->items[2]->text;
  storage->number = pid->items[4]->number;
  return Push(storage);
}

absl::StatusOr<Value*> PickleVm::Run() {
  while (pos_ < size_) {
    op_pos_ = pos_;
    const uint8_t op = data_[pos_++];
    absl::Status status;
    switch (op) {
      case 0x80:  // PROTO n
        if (status = Need(1); status.ok()) {
          if (data_[pos_] > 5) status = Error(absl::StrCat("pickle protocol ", data_[pos_]));
          ++pos_;
        }
        break;
      case 0x95:  // FRAME len (protocol 4): framing only
        if (status = Need(8); status.ok()) pos_ += 8;
        break;
      case '.': {  // STOP
        if (!marks_.empty()) return Error("STOP with an open MARK");
        return Pop();
      }
      case '(':  // MARK
        if (marks_.size() >= kMaxStack) return Error("too many MARKs");
        marks_.push_back(stack_.size());
        break;
      case '}':  // EMPTY_DICT
        status = Push(New(Kind::kDict));
        break;
      case ']':  // EMPTY_LIST
        status = Push(New(Kind::kList));
        break;
      case ')':  // EMPTY_TUPLE
        status = Push(New(Kind::kTuple));
        break;
      case 'N':  // NONE
        status = Push(New(Kind::kNone));
        break;
      case 0x88:  // NEWTRUE
      case 0x89: {  // NEWFALSE
        Value* v = New(Kind::kBool);
        v->number = op == 0x88;
        status = Push(v);
        break;
      }
      case 'J':  // BININT: int32
        if (status = Need(4); status.ok()) {
          status = PushInt(static_cast<int32_t>(Read32(data_ + pos_)));
          pos_ += 4;
        }
        break;
      case 'K':  // BININT1: uint8
        if (status = Need(1); status.ok()) status = PushInt(data_[pos_++]);
        break;
      case 'M':  // BININT2: uint16
        if (status = Need(2); status.ok()) {
          status = PushInt(Read16(data_ + pos_));
          pos_ += 2;
        }
        break;
      case 0x8a: {  // LONG1 n, n bytes little-endian two's complement
        if (status = Need(1); !status.ok()) break;
        const size_t n = data_[pos_++];
        if (n > 8) {
          status = Error("LONG1 wider than 64 bits");
          break;
        }
        if (status = Need(n); !status.ok()) break;
        uint64_t u = 0;
        for (size_t i = 0; i < n; ++i) u |= static_cast<uint64_t>(data_[pos_ + i]) << (8 * i);
        if (n > 0 && n < 8 && (data_[pos_ + n - 1] & 0x80)) u |= ~uint64_t{0} << (8 * n);
        pos_ += n;
        status = PushInt(static_cast<int64_t>(u));
        break;
      }
      case 'G': {  // BINFLOAT: big-endian double
        if (status = Need(8); !status.ok()) break;
        Value* v = New(Kind::kFloat);
        pos_ += 8;
        status = Push(v);
        break;
      }
      case 'X':  // BINUNICODE: uint32 length
        if (status = Need(4); status.ok()) {
          const size_t len = Read32(data_ + pos_);
          pos_ += 4;
          status = PushString(len);
        }
        break;
      case 0x8d:  // BINUNICODE8: uint64 length
        if (status = Need(8); status.ok()) {
          const uint64_t len = Read64(data_ + pos_);
          pos_ += 8;
          status = len > size_ ? Error("truncated") : PushString(static_cast<size_t>(len));
        }
        break;
      case 0x8c:  // SHORT_BINUNICODE: uint8 length
        if (status = Need(1); status.ok()) status = PushString(data_[pos_++]);
        break;
      case 'q':  // BINPUT: uint8 index
        if (status = Need(1); status.ok()) status = Put(data_[pos_++]);
        break;
      case 'r':  // LONG_BINPUT: uint32 index
        if (status = Need(4); status.ok()) {
          status = Put(Read32(data_ + pos_));
          pos_ += 4;
        }
        break;
      case 0x94:  // MEMOIZE
        status = Put(memo_.size());
        break;
      case 'h':  // BINGET
        if (status = Need(1); status.ok()) status = Get(data_[pos_++]);
        break;
      case 'j':  // LONG_BINGET
        if (status = Need(4); status.ok()) {
          status = Get(Read32(data_ + pos_));
          pos_ += 4;
        }
        break;
      case 'c': {  // GLOBAL "module\nname\n"
        auto module = ReadLine();
        if (!module.ok()) return module.status();
        auto name = ReadLine();
        if (!name.ok()) return name.status();
        Value* v = New(Kind::kGlobal);
        v->text = absl::StrCat(*module, ".", *name);
        status = Push(v);
        break;
      }
      case 0x93: {  // STACK_GLOBAL: module, name on the stack
        auto name = Pop();
        if (!name.ok()) return name.status();
        auto module = Pop();
        if (!module.ok()) return module.status();
        if ((*module)->kind != Kind::kString || (*name)->kind != Kind::kString) {
          return Error("STACK_GLOBAL of non-strings");
        }
        Value* v = New(Kind::kGlobal);
        v->text = absl::StrCat((*module)->text, ".", (*name)->text);
        status = Push(v);
        break;
      }
      case 't': {  // TUPLE: items above the mark
        auto items = PopToMark();
        if (!items.ok()) return items.status();
        Value* v = New(Kind::kTuple);
        v->items = std::move(*items);
        status = Push(v);
        break;
      }
      case 0x85:    // TUPLE1
      case 0x86:    // TUPLE2
      case 0x87: {  // TUPLE3
        const size_t n = op - 0x84;
        if (stack_.size() - MarkFloor() < n) return Error("stack underflow in TUPLEn");
        Value* v = New(Kind::kTuple);
        v->items.assign(stack_.end() - static_cast<std::ptrdiff_t>(n), stack_.end());
        stack_.resize(stack_.size() - n);
        status = Push(v);
        break;
      }
      case '0':  // POP
        status = Pop().status();
        break;
      case '1':  // POP_MARK
        status = PopToMark().status();
        break;
      case '2': {  // DUP
        auto top = Pop();
        if (!top.ok()) return top.status();
        stack_.push_back(*top);
        status = Push(*top);
        break;
      }
      case 'Q': {  // BINPERSID
        auto pid = Pop();
        if (!pid.ok()) return pid.status();
        status = PersistentLoad(*pid);
        break;
      }
      case 'R': {  // REDUCE
        auto args = Pop();
        if (!args.ok()) return args.status();
        auto callable = Pop();
        if (!callable.ok()) return callable.status();
        status = Reduce(*callable, *args);
        break;
      }
      case 'b': {  // BUILD: set the state of the object below; state dicts' _metadata is ignored
        auto state = Pop();
        if (!state.ok()) return state.status();
        if (stack_.size() <= MarkFloor()) return Error("BUILD without an object");
        const Kind kind = stack_.back()->kind;
        if (kind != Kind::kDict && kind != Kind::kTensor) {
          return Error(absl::StrCat("BUILD of a ", KindName(kind)));
        }
        break;
      }
      case 's': {  // SETITEM
        auto value = Pop();
        if (!value.ok()) return value.status();
        auto key = Pop();
        if (!key.ok()) return key.status();
        if (stack_.size() <= MarkFloor() || stack_.back()->kind != Kind::kDict) {
          return Error("SETITEM on a non-dict");
        }
        stack_.back()->entries.emplace_back(*key, *value);
        break;
      }
      case 'u': {  // SETITEMS: key, value pairs above the mark
        auto items = PopToMark();
        if (!items.ok()) return items.status();
        if (items->size() % 2 != 0) return Error("SETITEMS with an odd number of items");
        if (stack_.size() <= MarkFloor() || stack_.back()->kind != Kind::kDict) {
          return Error("SETITEMS on a non-dict");
        }
        for (size_t i = 0; i < items->size(); i += 2) {
          stack_.back()->entries.emplace_back((*items)[i], (*items)[i + 1]);
        }
        break;
      }
      case 'a': {  // APPEND
        auto value = Pop();
        if (!value.ok()) return value.status();
        if (stack_.size() <= MarkFloor() || stack_.back()->kind != Kind::kList) {
          return Error("APPEND on a non-list");
        }
        stack_.back()->items.push_back(*value);
        break;
      }
      case 'e': {  // APPENDS
        auto items = PopToMark();
        if (!items.ok()) return items.status();
        if (stack_.size() <= MarkFloor() || stack_.back()->kind != Kind::kList) {
          return Error("APPENDS on a non-list");
        }
        Value* list = stack_.back();
        list->items.insert(list->items.end(), items->begin(), items->end());
        break;
      }
      default:
        return Error(absl::StrCat("unsupported opcode 0x", absl::Hex(op, absl::kZeroPad2)));
    }
    if (!status.ok()) return status;
  }
  op_pos_ = pos_;
  return Error("truncated: no STOP opcode");
}

absl::Status TensorError(const std::string& file, const std::string& name,
                         absl::string_view what) {
  return absl::InvalidArgumentError(
      absl::StrCat(file, ": tensor '", name, "' in data.pkl ", what));
}

}  // namespace

absl::StatusOr<std::vector<TorchTensorRef>> ParseTorchPickle(const uint8_t* data, size_t size,
                                                             const std::string& file) {
  PickleVm vm(data, size, file);
  auto root = vm.Run();
  if (!root.ok()) return root.status();
  if ((*root)->kind != Kind::kDict) {
    return absl::InvalidArgumentError(
        absl::StrCat(file, ": data.pkl holds a ", KindName((*root)->kind),
                     ", not a state dict (a dict of tensors)"));
  }
  std::vector<TorchTensorRef> result;
  for (const auto& [key, value] : (*root)->entries) {
    if (key->kind != Kind::kString) {
      return absl::InvalidArgumentError(
          absl::StrCat(file, ": data.pkl state dict has a ", KindName(key->kind), " key"));
    }
    const std::string& name = key->text;
    if (value->kind != Kind::kTensor) {
      return TensorError(file, name, absl::StrCat("is a ", KindName(value->kind)));
    }
    const Value& storage = *value->storage;
    if (!storage.dtype) {
      return absl::UnimplementedError(
          absl::StrCat(file, ": tensor '", name, "' has unsupported storage type ",
                       storage.text, " (supported: FloatStorage, HalfStorage, BFloat16Storage)"));
    }
    TorchTensorRef ref;
    ref.name = name;
    ref.storage_key = storage.key;
    ref.dtype = *storage.dtype;
    ref.storage_numel = storage.number;
    ref.storage_offset = value->storage_offset;
    ref.shape = value->shape;
    if (value->stride.size() != ref.shape.size()) {
      return TensorError(file, name, "has a stride of different rank than its size");
    }
    // Contiguous row-major: stride[d] = prod(shape[d+1:]) wherever shape[d] > 1.
    // numel is bounded by the storage's numel, so the running product cannot overflow.
    int64_t numel = 1;
    for (size_t d = ref.shape.size(); d-- > 0;) {
      const int64_t dim = ref.shape[d];
      if (dim < 0) return TensorError(file, name, "has a negative size");
      if (dim > 1 && value->stride[d] != numel) {
        return TensorError(file, name,
                           absl::StrCat("is not contiguous (size [", absl::StrJoin(ref.shape, ", "),
                                        "], stride [", absl::StrJoin(value->stride, ", "), "])"));
      }
      if (dim != 0 && numel > ref.storage_numel / dim) {
        numel = ref.storage_numel + 1;  // saturate: already too large for the storage
      } else {
        numel *= dim;
      }
    }
    if (ref.storage_offset < 0 || numel > ref.storage_numel ||
        ref.storage_offset > ref.storage_numel - numel) {
      return TensorError(file, name,
                         absl::StrCat("exceeds its storage (offset ", ref.storage_offset,
                                      ", size [", absl::StrJoin(ref.shape, ", "), "], storage of ",
                                      ref.storage_numel, " elements)"));
    }
    result.push_back(std::move(ref));
  }
  return result;
}

absl::StatusOr<std::vector<TensorInfo>> ParseTorchCheckpoint(const uint8_t* data, size_t size,
                                                             const std::string& file) {
  // torch.save before PyTorch 1.6 wrote a bare pickle stream starting with PROTO 2 and a
  // LONG1 magic number; name it instead of calling it a broken zip.
  if (size >= 4 && data[0] == 0x80 && data[1] == 0x02 && data[2] == 0x8a) {
    return absl::UnimplementedError(absl::StrCat(
        file, ": legacy (pre-1.6, non-zip) torch.save format is not supported; re-save it "
              "with a current torch or convert it to safetensors"));
  }
  auto entries = ParseZipDirectory(data, size, file);
  if (!entries.ok()) return entries.status();

  // The pickle is <archive>/data.pkl, <archive> being one path component.
  const ZipEntry* pickle = nullptr;
  std::unordered_map<std::string, const ZipEntry*> by_name;
  constexpr std::string_view kPickleSuffix = "/data.pkl";
  for (const ZipEntry& entry : *entries) {
    by_name[entry.name] = &entry;
    const std::string_view name = entry.name;
    if (name.size() > kPickleSuffix.size() && name.ends_with(kPickleSuffix) &&
        name.find('/') == name.size() - kPickleSuffix.size()) {
      if (pickle != nullptr) {
        return absl::InvalidArgumentError(
            absl::StrCat(file, ": zip archive holds two data.pkl entries"));
      }
      pickle = &entry;
    }
  }
  if (pickle == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(
        file, ": not a torch.save checkpoint (no <archive>/data.pkl entry in the zip archive)"));
  }
  const auto stored = [&](const ZipEntry& entry) -> absl::Status {
    if (entry.method == 0) return absl::OkStatus();
    return absl::UnimplementedError(absl::StrCat(
        file, ": zip entry '", entry.name, "' is compressed (method ", entry.method,
        "); only stored entries are supported, as torch.save writes them"));
  };
  if (auto s = stored(*pickle); !s.ok()) return s;
  const std::string prefix = pickle->name.substr(0, pickle->name.size() - kPickleSuffix.size());

  // Storages are read as little-endian (the format's default when <archive>/byteorder is absent).
  if (const auto order = by_name.find(prefix + "/byteorder"); order != by_name.end()) {
    const ZipEntry& entry = *order->second;
    if (auto s = stored(entry); !s.ok()) return s;
    const std::string_view text(reinterpret_cast<const char*>(data + entry.data_offset),
                                entry.size);
    if (text != "little") {
      return absl::UnimplementedError(absl::StrCat(
          file, ": checkpoint byte order is '", absl::CHexEscape(std::string(text)), "'; only little-endian "
          "checkpoints are supported"));
    }
  }
  auto refs = ParseTorchPickle(data + pickle->data_offset, pickle->size, file);
  if (!refs.ok()) return refs.status();

  std::vector<TensorInfo> tensors;
  tensors.reserve(refs->size());
  for (TorchTensorRef& ref : *refs) {
    const std::string entry_name = absl::StrCat(prefix, "/data/", ref.storage_key);
    const auto it = by_name.find(entry_name);
    if (it == by_name.end()) {
      return absl::InvalidArgumentError(absl::StrCat(file, ": tensor '", ref.name,
                                                     "': storage entry '", entry_name,
                                                     "' is missing from the zip archive"));
    }
    const ZipEntry& entry = *it->second;
    if (auto s = stored(entry); !s.ok()) return s;
    const uint64_t element_bytes = kernels::DTypeBytes(ref.dtype);
    if (static_cast<uint64_t>(ref.storage_numel) > entry.size / element_bytes) {
      return absl::InvalidArgumentError(absl::StrCat(
          file, ": truncated checkpoint: tensor '", ref.name, "' storage '", entry_name,
          "' holds ", entry.size, " bytes, fewer than ", ref.storage_numel, " x ",
          element_bytes));
    }
    // numel <= storage_numel was checked when parsed (a zero dimension makes it 0).
    int64_t numel = 1;
    for (int64_t d : ref.shape) numel = d == 0 ? 0 : numel;
    for (int64_t d : ref.shape) numel *= numel == 0 ? 1 : d;
    TensorInfo info;
    info.name = std::move(ref.name);
    info.file = file;
    info.dtype = ref.dtype;
    info.shape = std::move(ref.shape);
    info.data = data + entry.data_offset + static_cast<uint64_t>(ref.storage_offset) * element_bytes;
    info.bytes = static_cast<size_t>(numel) * element_bytes;
    tensors.push_back(std::move(info));
  }
  return tensors;
}

}  // namespace specmoe::engine
