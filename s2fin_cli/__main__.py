from s2fin_cli.cli.app import main

main()
