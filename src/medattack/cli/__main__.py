from medattack.cli import app

app()
