//! What a console client sends over its WebSocket (any bytes): the frame reader never panics and
//! never hangs, and it forwards no more payload than it was sent.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    runtime.block_on(async {
        let (tx, mut rx) = tokio::sync::mpsc::channel(16);
        let read = async move {
            let (mut reader, mut forwarded) = (data, Vec::new());
            let ended = wsframes::read_frames(&mut reader, Default::default(), &mut forwarded, &tx).await;
            (ended, forwarded)
        };
        let drain = async { while rx.recv().await.is_some() {} };
        let ((ended, forwarded), ()) = tokio::join!(read, drain);
        assert!(ended.is_ok());
        assert!(forwarded.len() <= data.len());
    });
});
