;; Hostile: answers bytes that are not ABI results (plugin_bad_output).
(module
  (memory (export "memory") 1)
  (data (i32.const 16) "\ff\ff\ff\7f garbage, not a result frame")
  (func (export "igw_abi_version") (result i32) (i32.const 1))
  (func (export "igw_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "igw_route") (param i32 i32) (result i64)
    ;; (16 << 32) | 36
    (i64.or (i64.shl (i64.const 16) (i64.const 32)) (i64.const 36))))
