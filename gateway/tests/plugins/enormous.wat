;; Hostile: claims a 2 GiB result (refused before any copy: plugin_bad_output).
(module
  (memory (export "memory") 1)
  (func (export "igw_abi_version") (result i32) (i32.const 1))
  (func (export "igw_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "igw_route") (param i32 i32) (result i64)
    (i64.or (i64.shl (i64.const 0) (i64.const 32)) (i64.const 0x7fffffff))))
