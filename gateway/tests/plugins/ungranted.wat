;; Hostile: imports the key-value map without the `kv` capability (refused when it loads: plugin_abi).
(module
  (import "igw" "kv_add" (func $kv_add (param i32 i32 i64) (result i64)))
  (memory (export "memory") 1)
  (func (export "igw_abi_version") (result i32) (i32.const 1))
  (func (export "igw_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "igw_route") (param i32 i32) (result i64) (i64.const 0)))
