;; Hostile: speaks ABI version 2 (refused when it loads: plugin_abi).
(module
  (memory (export "memory") 1)
  (func (export "igw_abi_version") (result i32) (i32.const 2))
  (func (export "igw_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "igw_route") (param i32 i32) (result i64) (i64.const 0)))
