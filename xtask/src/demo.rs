pub fn demo(_c: usize) -> anyhow::Result<()> {
    anyhow::bail!("todo")
}
