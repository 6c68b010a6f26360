from gpuroam.cli import app

app(prog_name="gpuroam")
