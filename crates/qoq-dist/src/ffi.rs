//! The C ABI of csrc/shim.cpp. Tensors cross as tch's `C_tensor` pointers, which are
//! `torch::Tensor*` on the C++ side.

use std::ffi::{c_char, c_int, c_void};

use tch::Tensor;

extern "C" {
    pub fn qoq_dist_new(
        host: *const c_char,
        port: c_int,
        rank: c_int,
        size: c_int,
        backend: c_int,
        timeout_ms: i64,
        agent_store: c_int,
        prefix: *const c_char,
        err: *mut *mut c_char,
    ) -> *mut c_void;
    pub fn qoq_dist_free(group: *mut c_void);
    pub fn qoq_dist_free_string(s: *mut c_char);
    pub fn qoq_dist_close_backend(group: *mut c_void);
    pub fn qoq_dist_all_reduce(group: *mut c_void, t: *mut c_void, op: c_int, err: *mut *mut c_char) -> c_int;
    pub fn qoq_dist_all_gather(
        group: *mut c_void,
        output: *mut c_void,
        input: *mut c_void,
        err: *mut *mut c_char,
    ) -> c_int;
    pub fn qoq_dist_reduce_scatter(
        group: *mut c_void,
        output: *mut c_void,
        input: *mut c_void,
        op: c_int,
        err: *mut *mut c_char,
    ) -> c_int;
    pub fn qoq_dist_gather(
        group: *mut c_void,
        output: *mut c_void,
        input: *mut c_void,
        root: c_int,
        err: *mut *mut c_char,
    ) -> c_int;
    pub fn qoq_dist_broadcast(group: *mut c_void, t: *mut c_void, root: c_int, err: *mut *mut c_char) -> c_int;
    pub fn qoq_dist_barrier(group: *mut c_void, err: *mut *mut c_char) -> c_int;
    pub fn qoq_dist_store_set(
        group: *mut c_void,
        key: *const c_char,
        value: *const u8,
        len: usize,
        err: *mut *mut c_char,
    ) -> c_int;
    pub fn qoq_dist_store_check(
        group: *mut c_void,
        key: *const c_char,
        present: *mut c_int,
        err: *mut *mut c_char,
    ) -> c_int;
    pub fn qoq_dist_store_get(
        group: *mut c_void,
        key: *const c_char,
        value: *mut *mut u8,
        len: *mut usize,
        err: *mut *mut c_char,
    ) -> c_int;
}

pub fn tensor_ptr(t: &Tensor) -> *mut c_void {
    t.as_ptr() as *mut c_void
}

/// Takes ownership of a message the shim allocated.
pub fn take_message(err: *mut c_char) -> String {
    if err.is_null() {
        return "unknown error (no message)".into();
    }
    // SAFETY: the shim hands out NUL-terminated strings from malloc; freed exactly once here.
    let s = unsafe { std::ffi::CStr::from_ptr(err) }.to_string_lossy().into_owned();
    unsafe { qoq_dist_free_string(err) };
    s
}
