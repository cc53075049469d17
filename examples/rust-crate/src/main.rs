//! A small server-type output: prints a greeting and the argument count.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    println!("hello from a kiln-built binary ({} arguments)", args.len());
}
