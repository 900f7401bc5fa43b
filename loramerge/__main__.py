from loramerge.cli.app import main

main()
