fn main() { paykey::x(); }
