from fedpress.cli import main

main()
